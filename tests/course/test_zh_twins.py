"""The Chinese edition (issue 15): every English notebook has its twin in notebooks/zh-CN/, with
the same cells one for one: code cells identical, markdown cells translated from the English
cells as they are now (tools/zh_twins.py says what differs and how to carry a change over).

PENDING lists the notebooks whose twin is still being written; it only shrinks. A twin that
appears must leave the list (test_pending_twins_are_still_missing), and
test_the_chinese_edition_is_complete is an expected failure, naming what is missing, until
PENDING is empty.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("zh_twins", REPO / "tools" / "zh_twins.py")
assert _spec is not None and _spec.loader is not None
zh_twins = importlib.util.module_from_spec(_spec)
sys.modules["zh_twins"] = zh_twins
_spec.loader.exec_module(zh_twins)

ENGLISH = [p.name for p in zh_twins.english_notebooks()]
#: English notebooks without their Chinese twin yet (helper zh-b: 06-09, then 10-14 and the
#: workshop's). Take a name off when its twin lands; never add one back.
PENDING: set[str] = set()
TWINS = [n for n in ENGLISH if (zh_twins.ZH_DIR / n).exists()]


def test_every_english_notebook_has_its_twin_or_is_pending() -> None:
    missing = [n for n in ENGLISH if n not in TWINS and n not in PENDING]
    assert not missing, (f"no Chinese twin in notebooks/zh-CN/ for {missing}: write it "
                         "(tools/zh_twins.py new NAME), or add it to PENDING while it is being written")


def test_pending_twins_are_still_missing() -> None:
    done = sorted(n for n in PENDING if n in TWINS)
    assert not done, f"{done} now have their twin: take them off PENDING in {__file__}"


@pytest.mark.xfail(bool(PENDING), reason=f"Chinese twins still PENDING: {sorted(PENDING)}", strict=True)
def test_the_chinese_edition_is_complete() -> None:
    assert not PENDING, f"still without a Chinese twin: {sorted(PENDING)}"


def test_every_twin_has_an_english_original() -> None:
    strays = sorted(p.name for p in zh_twins.ZH_DIR.glob("*.ipynb") if p.name not in ENGLISH)
    assert not strays, f"notebooks/zh-CN/ has {strays}, which notebooks/ does not"


@pytest.mark.parametrize("name", TWINS)
def test_same_code_cells_and_translated_markdown(name: str) -> None:
    found = zh_twins.problems(name)
    assert not found, "\n".join(map(str, found))


@pytest.mark.parametrize("name", TWINS)
def test_twin_keeps_the_notebooks_metadata(name: str) -> None:
    english = nbformat.read(zh_twins.ENGLISH_DIR / name, as_version=4)
    twin = nbformat.read(zh_twins.ZH_DIR / name, as_version=4)
    assert twin.metadata.get("kernelspec") == english.metadata.get("kernelspec")


def test_the_checker_sees_a_change_not_carried_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A code edit, a markdown edit and a dropped cell in the English notebook all show up."""
    if not TWINS:
        pytest.skip("no twin yet")
    name = TWINS[0]
    en_dir, zh_dir = tmp_path / "notebooks", tmp_path / "notebooks" / "zh-CN"
    zh_dir.mkdir(parents=True)
    english = nbformat.read(zh_twins.ENGLISH_DIR / name, as_version=4)
    (zh_dir / name).write_bytes((zh_twins.ZH_DIR / name).read_bytes())
    monkeypatch.setattr(zh_twins, "ENGLISH_DIR", en_dir)
    monkeypatch.setattr(zh_twins, "ZH_DIR", zh_dir)
    code = next(i for i, c in enumerate(english.cells) if c.cell_type == "code")
    text = next(i for i, c in enumerate(english.cells) if c.cell_type == "markdown")
    english.cells[code].source += "\nprint('one more line')"
    english.cells[text].source += "\n\nOne more sentence."
    nbformat.write(english, en_dir / name)
    said = "\n".join(map(str, zh_twins.problems(name)))
    assert f"cell {code}: code differs" in said and f"cell {text}: the English cell changed" in said, said
    english.cells.pop()
    nbformat.write(english, en_dir / name)
    assert "cells, the English notebook has" in "\n".join(map(str, zh_twins.problems(name)))
