"""``python -m labxds``: serve snapshot files, run the whole lab, echo services, bootstraps, student notebooks.

Each command lives in a module of its own and is imported only when it runs, so ``serve`` works
with the control plane alone (``pip install labxds``), and ``up`` says which extra it needs. This
package is the only place that configures logging and installs signal handlers.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

#: command -> (module, the extra its imports need)
COMMANDS = {"serve": ("serve", None), "up": ("up", "lab"), "echo": ("echo", None), "bootstrap": ("bootstrap", None),
            "student": ("student", "notebook"),
            "classroom": ("classroom", "hub")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m labxds", description="Serve snapshot files over ADS, run the whole lab, echo services, learners' bootstraps.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, extra) in COMMANDS.items():
        try:
            importlib.import_module(f".{module}", __name__).add_parser(sub)
        except ModuleNotFoundError as exc:
            missing = exc.name
            stub = sub.add_parser(name, help=f"(needs {missing}: pip install 'labxds[{extra or 'all'}]')")
            stub.set_defaults(func=_missing(name, missing, extra))
    return parser


def _missing(command: str, module: str | None, extra: str | None) -> object:
    def run(args: argparse.Namespace) -> int:
        print(f"labxds {command} needs {module}, which is not installed: pip install 'labxds[{extra or 'all'}]'",
              file=sys.stderr)
        return 2

    return run


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"labxds: {exc}", file=sys.stderr)
        return 2
