"""``python -m labxds``: serve snapshot files, run the whole lab, echo services, bootstraps."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _serve(args: argparse.Namespace) -> int:
    from .snapshot_files import serve

    return serve(args.snapshot, host=args.host, port=args.port, check=not args.no_check, tls=args.tls,
                 tie_node_ids=args.tie_node_ids)


def _up(args: argparse.Namespace) -> int:
    from .lab import run_foreground

    return run_foreground(args)


def _echo(args: argparse.Namespace) -> int:
    from .echo import main as echo_main

    argv = ["--name", args.name, "--port", str(args.port), "--host", args.host]
    return echo_main(argv) or 0


def _bootstrap(args: argparse.Namespace) -> int:
    """Write a learner's Envoy bootstrap for a workshop's control plane."""
    import yaml

    from .workshop import Learner, learner_bootstrap, parse_address

    services: dict[str, list[tuple[str, int]]] = {}
    for item in args.service or []:
        name, sep, address = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--service {item!r}: write NAME=HOST:PORT")
        services.setdefault(name, []).append(parse_address(address, 8080))
    learner = Learner(args.node, listener_port=args.listener_port, services=services,
                      admin_url=f"http://127.0.0.1:{args.admin_port}")
    bootstrap = learner_bootstrap(
        args.node, args.control_plane, token=args.token, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
        tls_key=args.tls_key, admin_port=args.admin_port, delta=args.delta, learner=learner,
    )
    text = yaml.safe_dump(bootstrap, sort_keys=False)
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        with open(args.output, "w") as fh:
            fh.write(text)
        print(f"wrote {args.output}: node {args.node!r}, control plane {args.control_plane}; "
              f"run: envoy -c {args.output}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m labxds", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve snapshot files (Envoy's filesystem-config form) over ADS")
    serve.add_argument("--snapshot", nargs="+", required=True, metavar="PATH",
                       help="YAML/JSON files or directories; DIR/nodes/<node-id>/ holds one node's own snapshot")
    serve.add_argument("--port", type=int, default=18000)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--no-check", action="store_true",
                       help="skip the consistency check (routes or listeners use clusters Envoy's bootstrap defines)")
    serve.add_argument("--tls", metavar="DIR",
                       help="mutual TLS with DIR's ca.pem, server.pem and server-key.pem (as labxds.security."
                            "write_tls_files writes them); renewed files apply to new connections")
    serve.add_argument("--tie-node-ids", action="store_true",
                       help="with --tls: accept a node id only from a client certificate that names it")
    serve.set_defaults(func=_serve)

    up = sub.add_parser("up", help="run the whole lab: control plane, Envoy, service1 and service2")
    up.add_argument("--xds-port", type=int, default=18000)
    up.add_argument("--admin-port", type=int, default=19000)
    up.add_argument("--listener-port", type=int, default=10000)
    up.add_argument("--delta", action="store_true", help="Envoy uses Delta xDS instead of State of the World")
    up.add_argument("--upstream", default="service1", help="the upstream the first snapshot sends traffic to")
    up.set_defaults(func=_up)

    echo = sub.add_parser("echo", help="an echo service answering like the sandbox's echo-server")
    echo.add_argument("--name", required=True)
    echo.add_argument("--port", type=int, default=8080)
    echo.add_argument("--host", default="127.0.0.1")
    echo.set_defaults(func=_echo)

    boot = sub.add_parser("bootstrap", help="write a learner's Envoy bootstrap for a workshop's control plane")
    boot.add_argument("--node", required=True, help="your name: the node id the instructor sees")
    boot.add_argument("--control-plane", required=True, metavar="HOST:PORT", help="the instructor's control plane")
    boot.add_argument("--token", help="your token (sent as gRPC metadata x-labxds-token)")
    boot.add_argument("--tls-ca", metavar="FILE", help="the workshop's CA certificate (TLS to the control plane)")
    boot.add_argument("--tls-cert", metavar="FILE", help="your client certificate")
    boot.add_argument("--tls-key", metavar="FILE", help="your client certificate's key")
    boot.add_argument("--admin-port", type=int, default=19000)
    boot.add_argument("--listener-port", type=int, default=10000, help="where your listener_0 will listen")
    boot.add_argument("--service", action="append", metavar="NAME=HOST:PORT",
                      help="an echo service of yours, announced to the instructor (repeatable)")
    boot.add_argument("--delta", action="store_true", help="Delta xDS instead of State of the World")
    boot.add_argument("-o", "--output", metavar="FILE", help="where to write (default: standard output)")
    boot.set_defaults(func=_bootstrap)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"labxds: {exc}", file=sys.stderr)
        return 2
