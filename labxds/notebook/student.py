"""Student versions of the lessons: the solutions taken out by nbgrader, the placeholders kept.

An exercise cell holds a placeholder line, then the solution between nbgrader's markers.
nbgrader's ``ClearSolutions`` replaces what the markers enclose; here with a comment instead of
nbgrader's default ``raise NotImplementedError()``, so a student who runs the cell keeps the
placeholder (``answer = None``) and the check cell after it answers with a hint, not a
traceback. The same stub in ``nbgrader_config.py`` gives the same result with ``nbgrader
generate_assignment``::

    c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE"}
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

__all__ = ["CODE_STUB", "student_version", "write_student_version"]

#: What replaces a solution in a student's notebook.
CODE_STUB = "# YOUR CODE HERE"


def student_version(nb: Any) -> Any:
    """A copy of notebook ``nb`` (an nbformat node) with every solution cleared and no outputs."""
    from nbgrader.preprocessors import ClearOutput, ClearSolutions

    student = copy.deepcopy(nb)
    resources: dict[str, Any] = {}
    student, resources = ClearSolutions(code_stub={"python": CODE_STUB}).preprocess(student, resources)
    student, resources = ClearOutput().preprocess(student, resources)
    return student


def write_student_version(path: str | Path, out_dir: str | Path) -> Path:
    """Write the student version of the notebook at ``path`` into ``out_dir``; returns its path."""
    import nbformat

    source = Path(path)
    target = Path(out_dir) / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(student_version(nbformat.read(source, as_version=4)), target)
    return target
