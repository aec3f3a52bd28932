"""``python -m labxds serve``: snapshot files served over ADS until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..files import (
    SNAPSHOT_SUFFIXES,
    SnapshotFileError,
    SnapshotWatcher,
    load_snapshots,
)
from ..files.parse import PathLike

__all__ = ["add_parser", "run", "serve"]

log = logging.getLogger("labxds.snapshot_files")

#: Seconds a stop (SIGTERM, SIGINT) may take before the process ends without finishing it.
STOP_DEADLINE = 10.0


# --------------------------------------------------------------------------- serve


def add_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="serve snapshot files (Envoy's filesystem-config form) over ADS")
    serve.add_argument("--snapshot", nargs="+", required=True, metavar="PATH",
                       help="YAML/JSON files or directories; DIR/nodes/<node-id>/ holds one node's own snapshot")
    serve.add_argument("--port", type=int, default=18000)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--no-check", action="store_true",
                       help="skip the consistency check (routes or listeners use clusters Envoy's bootstrap defines)")
    serve.add_argument("--tls", metavar="DIR",
                       help="mutual TLS with DIR's ca.pem, server.pem and server-key.pem (as labxds.tls."
                            "write_tls_files writes them); renewed files apply to new connections")
    serve.add_argument("--tie-node-ids", action="store_true",
                       help="with --tls: accept a node id only from a client certificate that names it")
    serve.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return serve(args.snapshot, host=args.host, port=args.port, check=not args.no_check, tls=args.tls,
                 tie_node_ids=args.tie_node_ids)


def serve(
    paths: Sequence[PathLike],
    host: str = "127.0.0.1",
    port: int = 18000,
    *,
    check: bool = True,
    tls: PathLike | None = None,
    tie_node_ids: bool = False,
) -> int:
    """``python -m labxds serve``: serve snapshot files over ADS until SIGTERM or SIGINT.

    ``tls``: a directory with ``ca.pem``, ``server.pem`` and ``server-key.pem`` (as
    ``labxds.security.write_tls_files`` writes them): mutual TLS, files re-read when renewed.
    ``tie_node_ids``: a client's node id must be named by its certificate.
    Returns 0 after a clean stop, 2 if the files cannot be served at startup.
    """
    path_list = [Path(p) for p in paths]
    stop = threading.Event()
    previous: dict[int, Any] = {}

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():  # asked twice: stop now
            os._exit(128 + signum)
        stop.set()
        # Stop whatever the watcher is doing: if the clean stop has not finished in time (a thread
        # stuck in a long C call holding the GIL, a hung join), faulthandler's own C thread prints
        # where each thread is and ends the process.
        faulthandler.dump_traceback_later(STOP_DEADLINE, exit=True)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s labxds: %(message)s", "%H:%M:%S"))
    labxds_log = logging.getLogger("labxds")
    saved_level = labxds_log.level
    labxds_log.addHandler(handler)
    labxds_log.setLevel(logging.INFO)
    control_plane = None
    watcher = None
    try:
        try:
            snapshots = load_snapshots(path_list, check=check)
        except SnapshotFileError as exc:
            print(f"labxds: cannot serve {exc}", file=sys.stderr, flush=True)
            return 2
        if snapshots.default is None and not snapshots.nodes:
            log.warning(
                "no snapshot files (%s) in %s yet: serving nothing until some appear",
                ", ".join("*" + s for s in SNAPSHOT_SUFFIXES), ", ".join(map(str, path_list)),
            )
        from ..xds.control_plane import ControlPlane

        credentials, authorize, secured = None, None, ""
        if tls is not None:
            from ..tls import (
                CertificateAuthorizer,
                TlsFileError,
                server_credentials,
                tls_files_in,
            )

            try:
                credentials = server_credentials(tls_files_in(Path(tls)))
            except TlsFileError as exc:
                print(f"labxds: cannot serve over TLS: {exc}", file=sys.stderr, flush=True)
                return 2
            authorize = CertificateAuthorizer() if tie_node_ids else None
            secured = "; mutual TLS" + (", node ids tied to client certificates" if tie_node_ids else "")
        elif tie_node_ids:
            print("labxds: --tie-node-ids needs --tls: the node ids are tied to client certificates",
                  file=sys.stderr, flush=True)
            return 2
        control_plane = ControlPlane(port=port, host=host, server_credentials=credentials, authorize=authorize).start()
        watcher = SnapshotWatcher(path_list, control_plane, check=check).start(initial=snapshots)
        print(
            f"labxds: serving ADS (SotW and Delta) on {control_plane.address} from "
            f"{', '.join(map(str, path_list))}: {snapshots.describe()}; watching for changes{secured} "
            "(Ctrl-C or SIGTERM stops)",
            flush=True,
        )
        while not stop.wait(1.0):
            pass
        log.info("stopping")
        return 0
    finally:
        if watcher is not None:
            watcher.stop()
        if control_plane is not None:
            control_plane.stop()
        labxds_log.removeHandler(handler)
        labxds_log.setLevel(saved_level)
        for number, old in previous.items():
            signal.signal(number, old)
        faulthandler.cancel_dump_traceback_later()
