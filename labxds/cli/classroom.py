"""``python -m labxds classroom``: the instructor's workshop as a JupyterHub service.

JupyterHub starts it (deploy/jupyterhub/jupyterhub_config.py) with ``JUPYTERHUB_API_TOKEN``,
``JUPYTERHUB_SERVICE_URL`` and ``JUPYTERHUB_SERVICE_PREFIX`` in its environment; on Kubernetes
the Deployment in deploy/jupyterhub/k8s/workshop.yaml sets the same. It runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from urllib.parse import urlsplit

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    room = sub.add_parser("classroom", help="the instructor's workshop as a JupyterHub service (docs/workshop.md)")
    room.add_argument("--store", required=True, metavar="FILE",
                      help="SQLite file with the workshop's state (made if missing, reloaded on start)")
    room.add_argument("--xds-port", type=int, default=18000, help="the control plane's port (ADS; default 18000)")
    room.add_argument("--host", default="127.0.0.1", help="address the control plane binds (default 127.0.0.1)")
    room.add_argument("--tls", metavar="DIR", help="mutual TLS on ADS, with the workshop's CA kept in DIR")
    room.add_argument("--advertise", metavar="HOST:PORT",
                      help="the control plane as learners' Envoys reach it (default: where it binds)")
    room.add_argument("--desk-url", metavar="URL",
                      help="the desk as learners' kernels reach it (default: this service's address and prefix)")
    room.add_argument("--http", metavar="URL",
                      help="where the web application listens (default: $JUPYTERHUB_SERVICE_URL, from the hub)")
    room.add_argument("--learners", metavar="A,B,...", default="", help="put these names on the roster at start")
    room.add_argument("--instructors", metavar="A,B,...", default="",
                      help="hub users who see the dashboard and drive the class (default: anyone the hub "
                           "lets through to the service)")
    room.set_defaults(func=run)


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def run(args: argparse.Namespace) -> int:
    import importlib.util
    import sys

    from ..classroom import Workshop, sandbox
    from ..classroom.service import WorkshopService

    missing = [m for m in ("jupyterhub", "tornado") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"labxds classroom needs {', '.join(missing)}, which is not installed: pip install 'labxds[hub]'",
              file=sys.stderr)
        return 2

    logging.basicConfig(level=logging.WARNING, format="[%(levelname).1s %(asctime)s %(name)s] %(message)s")
    for name in ("labxds", "tornado.access"):
        logging.getLogger(name).setLevel(logging.INFO)
    if not os.environ.get("JUPYTERHUB_API_TOKEN"):
        raise ValueError("no hub API token: JupyterHub sets JUPYTERHUB_API_TOKEN for its services "
                         "(on Kubernetes, workshop.yaml reads it from the chart's Secret)")  # fmt: skip
    http = urlsplit(args.http or os.environ.get("JUPYTERHUB_SERVICE_URL") or "http://127.0.0.1:18080")
    http_host, http_port = http.hostname or "127.0.0.1", http.port or 80
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX") or "/services/workshop/"
    if args.host in ("0.0.0.0", "::", "") and not args.advertise:
        raise ValueError(f"--host {args.host} binds every interface: say with --advertise HOST:PORT how "
                         "learners' Envoys reach the control plane")
    ws = Workshop(port=args.xds_port, host=args.host, tokens=True, tls=args.tls, desk_port=None,
                  store=args.store).start()
    fresh = not ws.learners() and ws.source_of("") == "-"
    for name in _names(args.learners):
        ws.add_learner(name)
    if fresh:  # a new class starts from the sandbox, as the learner notebook expects
        ws.broadcast(sandbox("service1"), wait=False)
    host = f"[{http_host}]" if ":" in http_host else http_host
    desk = args.desk_url or f"http://{'127.0.0.1' if http_host in ('0.0.0.0', '::') else host}:{http_port}" \
                            f"{prefix.rstrip('/')}"
    service = WorkshopService(ws, prefix=prefix, instructors=_names(args.instructors),
                              advertise=args.advertise, desk_url=desk)  # fmt: skip

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = service.application().listen(http_port, address=http_host, xheaders=True)
        print(f"labxds classroom: control plane {ws.address} (learners use {service.advertise or ws.address}), "
              f"web {http_host}:{http_port}{prefix}, desk {desk}, store {args.store}"
              f"{', mutual TLS' if args.tls else ''}", flush=True)  # fmt: skip
        await stop.wait()
        server.stop()

    try:
        asyncio.run(serve())
    finally:
        ws.stop()
    return 0
