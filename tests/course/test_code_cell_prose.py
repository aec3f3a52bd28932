"""No English sentence in what a lesson's code cell prints or draws, unless it goes through ``tr()``.

The Chinese lessons (notebooks/zh-CN/) run the English code cells, so a sentence a code cell hands
straight to ``print`` or to a chart stays English there. ``tr("...")`` (labxds.notebook.tr) shows it
in the notebook's language, and labxds/i18n/notebooks.py puts it in the catalogue; tables' captions
and diagrams' titles are translated by labxds itself (CAPTION_CALLS, TITLE_CALLS). Assert messages
are left alone: a learner sees them only when a check fails; so is an exercise's solution (between
nbgrader's ### BEGIN/END SOLUTION): the learner writes that code, in their own words.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from labxds.i18n.notebooks import CAPTION_CALLS, MESSAGE_CALLS, TITLE_CALLS

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))

#: Calls whose arguments a learner reads: printed, or written on a chart.
SHOWN_CALLS = frozenset({"print", "set_title", "set_xlabel", "set_ylabel", "suptitle", "xlabel", "ylabel", "title"})
#: Keywords a learner reads, of any call (a legend's label, a chart's or a widget's title or description).
SHOWN_KEYWORDS = frozenset({"label", "title", "xlabel", "ylabel", "description"})
#: Words that are names, shown as they are in every language (the lab's resources).
NAMES = frozenset({"promo"})
WORD = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def _name(func: ast.expr) -> str | None:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def _texts(node: ast.expr) -> Iterator[str]:
    """The literal text an expression puts in front of the learner, outside ``tr()``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, ast.JoinedStr):
        yield " ".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
    elif isinstance(node, ast.BoolOp):
        for value in node.values:
            yield from _texts(value)
    elif isinstance(node, ast.BinOp):
        yield from _texts(node.left)
        yield from _texts(node.right)
    elif isinstance(node, ast.IfExp):
        yield from _texts(node.body)
        yield from _texts(node.orelse)
    elif isinstance(node, ast.Call) and _name(node.func) == "format" and isinstance(node.func, ast.Attribute):
        yield from _texts(node.func.value)  # "... {n}".format(n=n): the sentence is the string formatted
    # anything else (a name, a subscript, another call, tr("...") itself) is data, not a sentence


def english(text: str) -> bool:
    """Whether ``text`` has a word of English: letters only, not an acronym (CDS, NACK), not a name."""
    return any(w.isalpha() and len(w) > 1 and not w.isupper() and w not in NAMES for w in WORD.findall(text))


def untranslated(source: str) -> Iterator[tuple[int, str]]:
    """(line, text) of every English literal a cell prints or draws without ``tr()``."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython magics: not Python
        return
    solution: set[int] = set()
    begin = None
    for number, line in enumerate(source.splitlines(), 1):
        if line.strip() == "### BEGIN SOLUTION":
            begin = number
        elif line.strip() == "### END SOLUTION" and begin is not None:
            solution.update(range(begin, number + 1))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        shown: list[ast.expr] = list(node.args) if name in SHOWN_CALLS else []
        if name not in MESSAGE_CALLS | TITLE_CALLS | CAPTION_CALLS:  # those translate their own
            shown += [k.value for k in node.keywords if k.arg in SHOWN_KEYWORDS]
        for value in shown:
            for text in _texts(value):
                if english(text) and value.lineno not in solution:
                    yield value.lineno, text


def test_the_scan_finds_english_and_leaves_tr_names_and_data() -> None:
    code = ('print("✓ 20/20 to service1")\n'
            'print(f"✓ {n} requests, none failed")\n'
            'ax.set_title("asked vs observed")\n'
            'ax.plot(x, y, label="as asked")\n'
            'print(run_jq(dump) or "(jq is not installed)")\n'
            'print("{n} failed".format(n=n))\n'
            'print(tr("✓ 20/20 to service1"))\n'
            'print(tr("✓ {n} requests").format(n=n), sorted(held))\n'
            'print("version_info:", jq(dump, ".configs[1]"), "CA:", x["error"], "promo:", "NACK:", f"{a}: {b}")\n'
            'lab.sequence(since=mark, title="Version 1: the first snapshot")\n'
            'tables.styled(df, "What runs where")\n'
            'assert ok, "a message seen only when the check fails"\n'
            '### BEGIN SOLUTION\nw = ToggleButtons(description="upstream")\n### END SOLUTION\n')
    assert [text for _line, text in untranslated(code)] == [
        "✓ 20/20 to service1", "✓   requests, none failed", "asked vs observed", "as asked",
        "(jq is not installed)", "{n} failed"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_code_cells_show_no_english_outside_tr(path: Path) -> None:
    found = []
    for i, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
        if cell["cell_type"] == "code":
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            found += [f"cell {i} line {line}: {text!r}" for line, text in untranslated(source)]
    assert not found, (f"{path.name}: wrap these in tr() (from labxds.notebook import tr), run `make i18n` and "
                       "translate them in tools/zh_CN.json:\n" + "\n".join(found))
