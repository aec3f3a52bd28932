"""The messages the lessons' own code cells hand to labxds: a Babel extractor for notebooks.

A lesson's code cell is the same in every language (notebooks/zh-CN/ has the English cells), so
the words it passes to labxds are English: a table's caption, ``tables.styled(df, "What runs
where")``, and a diagram's title, ``lab.sequence(since=mark, title="Version 1: ...")``. labxds
translates them when it shows them (``styled`` and ``sequence`` call ``_()`` on them). What a
code cell prints itself, or writes on a chart, it wraps in ``tr("...")`` (``labxds.notebook.tr``,
which is ``_``): ``print(tr("✓ {n} requests, none failed").format(n=n))``; the traffic chart
translates the labels of ``traffic.mark("...")`` itself. This extractor puts all
of them in the catalogue: babel.cfg maps ``notebooks/*.ipynb`` to it, so ``make i18n`` lists them
with the package's own messages.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from typing import IO, Any

__all__ = ["CAPTION_CALLS", "MARK_CALLS", "MESSAGE_CALLS", "TITLE_CALLS", "extract_notebook", "notebook_strings"]

#: Calls whose second argument (or ``caption=``) is a caption labxds translates.
CAPTION_CALLS = frozenset({"styled"})
#: Calls whose ``title=`` labxds translates (diagrams, and the traffic chart).
TITLE_CALLS = frozenset({"sequence", "topology", "LiveChart", "traffic_figure", "traffic_png"})
#: Calls whose first argument is a message: what a code cell prints or draws, in the learner's language.
MESSAGE_CALLS = frozenset({"tr", "_"})
#: ``traffic.mark("listener_0 left out")``: a label the traffic chart translates where it draws it
#: (the lesson's checks keep comparing the English label).
MARK_CALLS = frozenset({"mark"})


def _name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


def _literal(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value else None


def code_strings(source: str) -> Iterator[tuple[int, str]]:
    """(line, text) of every caption, title, chart mark and ``tr("...")`` literal in one cell's code."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython magics and the like: nothing to extract
        return
    calls = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Call)), key=lambda n: (n.lineno, n.col_offset))
    for node in calls:
        name = _name(node.func)
        found: list[ast.expr | None] = []
        if (name in MESSAGE_CALLS or name in MARK_CALLS) and node.args:
            found.append(node.args[0])
        if name in CAPTION_CALLS:
            found.append(node.args[1] if len(node.args) > 1 else None)
            found += [k.value for k in node.keywords if k.arg == "caption"]
        if name in TITLE_CALLS or name in CAPTION_CALLS:
            found += [k.value for k in node.keywords if k.arg == "title"]
        for value in found:
            text = _literal(value)
            if text is not None and value is not None:
                yield value.lineno, text


def notebook_strings(notebook: dict[str, Any]) -> Iterator[tuple[int, str]]:
    """(cell number, text) of every caption, title and message in a notebook's code cells."""
    for i, cell in enumerate(notebook.get("cells", [])):
        if cell.get("cell_type") == "code":
            source = cell.get("source", "")
            for _line, text in code_strings("".join(source) if isinstance(source, list) else source):
                yield i, text


def extract_notebook(fileobj: IO[bytes], keywords: Any, comment_tags: Any,
                     options: Any) -> Iterator[tuple[int, str, str, list[str]]]:
    """Babel's extractor interface: (line, function, message, comments) per caption, title, message."""
    notebook = json.loads(fileobj.read().decode("utf-8"))
    for cell, text in notebook_strings(notebook):
        yield cell + 1, "_", text, []
