"""Lab cold start: from nothing running to the first request served by service1.

Two measurements, each in a fresh Python process (imports included, as a learner pays them):

* ``python -m labxds up``: the CLI that starts the control plane, service1 and service2 and
  Envoy, and pushes the sandbox's snapshot. Timed from ``Popen`` to the first response from
  ``service1`` through Envoy's listener (GET in a loop every 5 ms).
* the same steps through the Python API (``labxds.Lab``) with a timestamp after each phase, to
  say where the time goes: interpreter start, ``import labxds``, control plane, echo services,
  Envoy up (admin answers), Envoy connected to the control plane, push acknowledged, first GET.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    PYTHON,
    ROOT,
    RawHttp,
    arg_parser,
    free_port,
    machine_info,
    regenerate_docs,
    served_by,
    summary,
    write_result,
)


def run_cli(timeout: float = 30.0) -> dict[str, Any]:
    xds, admin, listener = free_port(), free_port(), free_port()
    lines: list[tuple[float, str]] = []
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [PYTHON, "-m", "labxds", "up", "--xds-port", str(xds), "--admin-port", str(admin),
         "--listener-port", str(listener)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.monotonic() - t0, line.rstrip()))

    threading.Thread(target=reader, daemon=True).start()
    client = RawHttp("127.0.0.1", listener, timeout=1.0)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"labxds up exited {proc.returncode}: " + "\n".join(l for _, l in lines[-10:]))
            status, body = client.get()
            if served_by(body) == "service1":
                first = time.monotonic() - t0
                break
            if time.monotonic() - t0 > timeout:
                raise TimeoutError("no response from service1 within %ss" % timeout)
            time.sleep(0.005)
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    up_line = next((t for t, l in lines if "lab up in" in l), None)
    return {"first_request_s": first, "up_line_s": up_line}


_PHASES = textwrap.dedent(r'''
    import json, sys, time
    t = {"python_started": time.monotonic()}
    import labxds
    from labxds import Lab
    t["imported"] = time.monotonic()
    lab = Lab(xds_port=XDS, admin_port=ADMIN, listener_port=LISTENER)
    from labxds.xds import ControlPlane
    from labxds.lab import EchoFleet
    from labxds.envoy import Envoy
    # wrap the phases to timestamp them
    cp_start, fleet_start, envoy_start = ControlPlane.start, EchoFleet.start, Envoy.start
    def stamp(name, f):
        def g(self, *a, **k):
            r = f(self, *a, **k)
            t.setdefault(name, time.monotonic())
            return r
        return g
    ControlPlane.start = stamp("control_plane", cp_start)
    EchoFleet.start = stamp("echo_services", fleet_start)
    Envoy.start = stamp("envoy_admin_up", envoy_start)
    lab.start(progress=False)
    t["envoy_connected"] = time.monotonic()
    lab.push(lab.sandbox_snapshot("service1", version="1"))
    t["push_acked"] = time.monotonic()
    sys.path.insert(0, BENCH)
    from _common import RawHttp, served_by
    c = RawHttp("127.0.0.1", LISTENER)
    while served_by(c.get()[1]) != "service1":
        time.sleep(0.002)
    t["first_request"] = time.monotonic()
    print(json.dumps(t), flush=True)
    lab.stop()
''')


def run_phases() -> dict[str, Any]:
    xds, admin, listener = free_port(), free_port(), free_port()
    code = (_PHASES.replace("XDS", str(xds)).replace("ADMIN", str(admin))
            .replace("LISTENER", str(listener)).replace("BENCH", repr(str(ROOT / "bench"))))
    t0 = time.monotonic()
    out = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    stamps = json.loads(out.stdout.strip().splitlines()[-1])
    return {k: v - t0 for k, v in stamps.items()}


def main() -> int:
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None, help="default 7 (quick 2)")
    args = parser.parse_args()
    runs = args.runs or (2 if args.quick else 7)
    info = machine_info()
    started = time.monotonic()
    cli, phases = [], []
    for i in range(runs):
        cli.append(run_cli())
        phases.append(run_phases())
        print(f"  run {i + 1}: labxds up -> first request {cli[-1]['first_request_s']:.2f}s; "
              f"API phases {json.dumps({k: round(v, 3) for k, v in phases[-1].items()})}", flush=True)
    names = list(phases[0])
    phase_p50 = {k: summary([p[k] for p in phases])["p50"] for k in names}
    result = {
        "machine": info,
        "runs": runs,
        "cli": {"first_request_s": summary([c["first_request_s"] for c in cli]),
                "up_line_s": summary([c["up_line_s"] for c in cli if c["up_line_s"] is not None]),
                "samples": cli},
        "phases_p50_s": phase_p50,
        "phases": phases,
        "wall_s": time.monotonic() - started,
    }
    print(f"labxds up: first request p50 {result['cli']['first_request_s']['p50']:.2f}s "
          f"(max {result['cli']['first_request_s']['max']:.2f}s)")
    write_result("cold_start", result, args.quick)
    if not args.no_report:
        regenerate_docs()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
