"""``python -m labxds echo``: one echo service in the foreground (what compose's service1/service2 run)."""

from __future__ import annotations

import argparse
import signal
import threading

from ..lab.echo import EchoService

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    echo = sub.add_parser("echo", help="an echo service answering like the sandbox's echo-server")
    echo.add_argument("--name", required=True, help="the name in 'Request served by <name>'")
    echo.add_argument("--port", type=int, default=8080)
    echo.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in containers)")
    echo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT. SIGTERM is handled explicitly: as PID 1 in a container,
    Python would otherwise ignore it."""
    service = EchoService(args.name, args.host, args.port).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"Echo server {args.name} listening on {args.host}:{service.port}.", flush=True)
    stop.wait()
    service.stop()
    return 0
