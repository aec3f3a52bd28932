"""``python -m labxds student``: the lessons without their solutions, for a class (nbgrader)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    student = sub.add_parser("student", help="write the lessons' student versions (solutions cleared by nbgrader)")
    student.add_argument("notebooks", nargs="+", metavar="NOTEBOOK", help="lesson notebooks (.ipynb)")
    student.add_argument("-o", "--output", required=True, metavar="DIR", help="where to write them")
    student.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write each notebook's student version into the output directory."""
    from ..notebook.student import write_student_version

    for path in args.notebooks:
        written = write_student_version(path, args.output)
        print(f"wrote {written}", file=sys.stderr)
    return 0
