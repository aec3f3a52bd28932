"""Shared helpers for the benchmarks: results, statistics, ports, processes, a raw HTTP client.

Every benchmark writes ``bench/results/<name>.json`` (``<name>.quick.json`` with ``--quick``)
and then regenerates ``docs/benchmarks.md`` from whatever full results exist (bench/report.py).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# -- limits ---------------------------------------------------------------------------------


def raise_nofile(want: int = 65536) -> tuple[int, int]:
    """Raise the soft open-files limit towards ``want`` (capped by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# -- statistics -----------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (numpy's default), p in 0..100."""
    if not values:
        return float("nan")
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "min": min(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs."""
    n = len(xs)
    if n < 2:
        return float("nan")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else float("nan")


# -- machine --------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _busy_processes() -> list[str]:
    """Other processes using CPU right now (the machine is shared with other test runs)."""
    try:
        import psutil
    except ImportError:
        return []
    me = os.getpid()
    procs = list(psutil.process_iter(["pid", "name", "cmdline"]))
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(0.5)
    busy = []
    for p in procs:
        try:
            if p.pid == me:
                continue
            cpu = p.cpu_percent(None)
            if cpu >= 5.0:
                cmd = " ".join(p.info["cmdline"] or [p.info["name"] or "?"])[:80]
                busy.append(f"{cpu:.0f}% {cmd}")
        except psutil.Error:
            pass
    return busy


def machine_info() -> dict[str, Any]:
    import google.protobuf
    import grpc

    try:
        from labxds.envoy import ENVOY_VERSION
    except Exception:  # pragma: no cover
        ENVOY_VERSION = "?"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "envoy": ENVOY_VERSION,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "busy_processes_at_start": _busy_processes(),
        "git_commit": _git_commit(),
    }


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except Exception:
        return "?"


# -- results --------------------------------------------------------------------------------


def rounded(obj: Any, digits: int = 6) -> Any:
    """Floats rounded (seconds to the microsecond) so result files stay small and diffable."""
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    return obj


def write_result(name: str, data: dict[str, Any], quick: bool) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "quick": quick, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()], **data}
    tag = os.environ.get("LABXDS_BENCH_TAG")  # e.g. "profile": keeps profiling runs apart
    path = RESULTS / f"{name}{'.quick' if quick else ''}{'.' + tag if tag else ''}.json"
    text = json.dumps(rounded(data), indent=1, default=float)
    path.write_text(text + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    return path


def regenerate_docs() -> None:
    subprocess.run([PYTHON, str(ROOT / "bench" / "report.py")], check=False)


# -- ports and processes --------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until(pred: Callable[[], Any], timeout: float, interval: float = 0.005, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        time.sleep(interval)


class EchoProcess:
    """``python -m labxds echo`` in a process of its own (as the sandbox's containers are)."""

    def __init__(self, name: str, port: int | None = None) -> None:
        self.name = name
        self.port = port or free_port()
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "labxds", "echo", "--name", name, "--port", str(self.port)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if "listening" not in line:
            self.stop()
            raise RuntimeError(f"echo {name} did not start: {line!r}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def proc_rss(pid: int | None = None) -> int:
    """Resident set size in bytes (VmRSS)."""
    path = f"/proc/{pid or 'self'}/status"
    for line in Path(path).read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def proc_cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (all threads)."""
    fields = Path(f"/proc/{pid or 'self'}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# -- a keep-alive HTTP/1.1 client with no library between the loop and the socket ------------


class RawHttp:
    """GET over one keep-alive connection; reconnects if Envoy closes it."""

    def __init__(self, host: str, port: int, path: str = "/", timeout: float = 2.0) -> None:
        self.addr = (host, port)
        self.timeout = timeout
        self.request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: labxds-bench\r\n\r\n".encode()
        self.sock: socket.socket | None = None
        self.buf = b""

    def _connect(self) -> socket.socket:
        s = socket.create_connection(self.addr, timeout=self.timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        return s

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def get(self) -> tuple[int, bytes]:
        """(status, body); (0, b"") when the connection fails (nothing listening yet)."""
        for _ in range(2):
            try:
                if self.sock is None:
                    self.sock = self._connect()
                self.sock.sendall(self.request)
                return self._read_response()
            except (OSError, ValueError):
                self.close()
        return 0, b""

    def _read_response(self) -> tuple[int, bytes]:
        assert self.sock is not None
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        close = False
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            if k == b"content-length":
                length = int(v)
            elif k == b"connection" and v.strip().lower() == b"close":
                close = True
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            rest += chunk
        body, self.buf = rest[:length], rest[length:]
        if close:
            self.close()
        return status, body


def sandbox_file_text(port: int, *, listener_port: int = 10000, clusters: bool = True, others: bool = True) -> str:
    """The sandbox's resources as a snapshot file (Envoy's filesystem form, JSON), upstream on
    127.0.0.1:``port``; ``clusters``/``others`` pick the cluster or the listener and route."""
    from google.protobuf import any_pb2, json_format

    from labxds.xds import sandbox_resources

    docs = []
    for r in sandbox_resources("127.0.0.1", port, listener_port=listener_port):
        if (clusters if r.DESCRIPTOR.name == "Cluster" else others):
            packed = any_pb2.Any()
            packed.Pack(r)
            docs.append(json.loads(json_format.MessageToJson(packed)))
    return json.dumps({"resources": docs})


def served_by(body: bytes) -> str | None:
    """'service1' from an echo body 'Request served by service1\\n...'."""
    if body.startswith(b"Request served by "):
        return body[18:body.find(b"\n")].decode()
    return None


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def arg_parser(description: str):  # type: ignore[no-untyped-def]
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a short run (smaller counts), written to *.quick.json")
    p.add_argument("--no-report", action="store_true", help="do not regenerate docs/benchmarks.md")
    return p


def iter_chunks(seq: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


# -- profiling ------------------------------------------------------------------------------


class PySpy:
    """``py-spy record`` of this process (all threads) while the block runs; raw folded stacks.

    Needs py-spy (``pip install py-spy``) and ptrace rights (root, or ptrace_scope 0).
    """

    def __init__(self, out: Path, rate: int = 250, native: bool = False) -> None:
        self.out = Path(out)
        self.rate = rate
        self.native = native
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "PySpy":
        import shutil

        exe = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
        if not Path(exe).exists():
            raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        args = [exe, "record", "-p", str(os.getpid()), "-r", str(self.rate), "-f", "raw", "-o", str(self.out),
                "--nonblocking"]
        if self.native:
            args.append("--native")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # let it attach
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def fold_profile(path: Path, top: int = 25, thread_filter: str | None = None) -> dict[str, Any]:
    """Self and inclusive sample counts per function from a py-spy raw (folded) file."""
    from collections import Counter

    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if thread_filter and not any(thread_filter in f for f in frames):
            continue
        n = int(count)
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    return {
        "samples": total,
        "self": [(f, c, c / total) for f, c in own.most_common(top)] if total else [],
        "inclusive": [(f, c, c / total) for f, c in incl.most_common(top)] if total else [],
    }
