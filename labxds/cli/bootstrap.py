"""``python -m labxds bootstrap``: write a learner's Envoy bootstrap for a workshop's control plane."""

from __future__ import annotations

import argparse
import sys

import yaml

from ..envoy.bootstrap import learner_bootstrap
from ..lab.metadata import Announcement
from ..net.addresses import parse_address

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
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
    boot.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write a learner's Envoy bootstrap for a workshop's control plane."""
    services: dict[str, list[tuple[str, int]]] = {}
    for item in args.service or []:
        name, sep, address = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--service {item!r}: write NAME=HOST:PORT")
        services.setdefault(name, []).append(parse_address(address, 8080))
    announce = Announcement(listener_port=args.listener_port, services=services,
                            admin_url=f"http://127.0.0.1:{args.admin_port}")
    bootstrap = learner_bootstrap(
        args.node, args.control_plane, token=args.token, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
        tls_key=args.tls_key, admin_port=args.admin_port, delta=args.delta, metadata=announce.metadata(),
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
