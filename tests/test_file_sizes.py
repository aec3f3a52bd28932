"""Issue 12: no module over about 500 lines without a reason written at its top.

A long file must say in its module docstring why it is one file ("Why one file ..."), so the
next person to grow it knows whether to split it instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "labxds"
LIMIT = 550  # "about 500"


def long_modules_without_a_reason(package: Path = PACKAGE, limit: int = LIMIT) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        if lines > limit and "Why one file" not in (ast.get_docstring(ast.parse(text)) or ""):
            found.append(f"{path.relative_to(package.parent)} ({lines} lines)")
    return found


def test_a_long_module_says_why_it_is_one_file() -> None:
    offenders = long_modules_without_a_reason()
    assert not offenders, (f"over {LIMIT} lines without a 'Why one file ...' paragraph in the module docstring: "
                           f"{offenders}; split them or say why not")


def test_the_check_sees_a_long_module(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "long.py").write_text('"""A module."""\n' + "x = 1\n" * (LIMIT + 1))
    (tmp_path / "pkg" / "reasoned.py").write_text('"""A module.\n\nWhy one file: one class."""\n' + "x = 1\n" * (LIMIT + 1))
    assert long_modules_without_a_reason(tmp_path / "pkg") == [f"pkg/long.py ({LIMIT + 2} lines)"]
