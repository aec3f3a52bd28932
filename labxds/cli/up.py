"""``python -m labxds up``: the whole lab in a terminal (control plane, Envoy, service1, service2)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

from ..lab.runtime import LabRuntime
from ..xds.resource_types import short_name

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("up", help="run the whole lab: control plane, Envoy, service1 and service2")
    up.add_argument("--xds-port", type=int, default=18000)
    up.add_argument("--admin-port", type=int, default=19000)
    up.add_argument("--listener-port", type=int, default=10000)
    up.add_argument("--delta", action="store_true", help="Envoy uses Delta xDS instead of State of the World")
    up.add_argument("--upstream", default="service1", help="the upstream the first snapshot sends traffic to")
    up.set_defaults(func=run)


def _status_line(lab: LabRuntime) -> str:
    cp = lab.cp
    node = cp.node_status(lab.node_id or "")
    parts = [f"Envoy {'up' if lab.envoy is None or lab.envoy.running else 'DOWN'}"]
    if node is not None:
        for url, st in node.types.items():
            mark = "NACK" if st.nacked_version and st.nacked_version != st.acked_version else "ok"
            parts.append(f"{short_name(url)} v{st.acked_version} {mark}")
    return " | ".join(parts)


def run(args: argparse.Namespace) -> int:
    """``python -m labxds up``: the whole lab in the foreground until Ctrl-C or SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    started = time.monotonic()
    lab = LabRuntime(
        xds_port=args.xds_port, admin_port=args.admin_port, listener_port=args.listener_port, delta=args.delta
    ).start(progress=sys.stderr.isatty())
    try:
        lab.push(lab.sandbox_snapshot(args.upstream, version="1"))
        print(f"labxds lab up in {time.monotonic() - started:.2f}s", flush=True)
        print(f"  listener       {lab.listener_url}  (curl it: Request served by {args.upstream})")
        pid = f" (Envoy pid {lab.envoy.pid})" if lab.envoy is not None else ""
        print(f"  Envoy admin    {lab.admin_url}/config_dump{pid}")
        print(f"  control plane  {lab.cp.address}  ({'Delta' if args.delta else 'SotW'} ADS)")
        for name in lab.service_counts:
            host, port = lab.upstream(name)
            print(f"  {name:<14} {host}:{port}")
        print("Ctrl-C stops everything.", flush=True)
        tty = sys.stdout.isatty()
        while not stop.wait(1.0):
            if tty:
                print(f"\r{_status_line(lab):<100}", end="", flush=True)
            if lab.envoy is not None and not lab.envoy.running:
                print("\nEnvoy exited; its last log lines:\n" + "\n".join(lab.envoy.logs(20)), file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        pass
    finally:
        print("\nstopping the lab", flush=True)
        lab.stop()
    return 0
