"""``python -m labxds student``: the lessons without their solutions."""

from __future__ import annotations

from pathlib import Path

import nbformat

from labxds.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_student_writes_the_lessons_without_solutions(tmp_path: Path) -> None:
    lesson = REPO / "notebooks" / "02_first_snapshot.ipynb"
    assert main(["student", str(lesson), "-o", str(tmp_path / "student")]) == 0
    written = nbformat.read(tmp_path / "student" / lesson.name, as_version=4)
    code = "\n".join(c.source for c in written.cells if c.cell_type == "code")
    assert "pushed = None" in code and "# YOUR CODE HERE" in code
    assert "BEGIN SOLUTION" not in code and 'version="1"))' not in code
    assert nbformat.read(lesson, as_version=4).cells != written.cells  # the source is left alone
