"""The Chinese edition's notebooks (notebooks/zh-CN/) against the English ones, cell for cell.

    .venv/bin/python tools/zh_twins.py            # what is missing, changed or stale (exit 1 if any)
    .venv/bin/python tools/zh_twins.py sync       # copy every English code cell into its twin
    .venv/bin/python tools/zh_twins.py new NAME   # start a twin: the English cells, markdown to translate
    .venv/bin/python tools/zh_twins.py stamp NAME [CELL ...]   # after translating: mark markdown cells
                                                  # as translations of the English cells as they are now

A twin has the English notebook's cells in the same order: every code cell identical (source and
nbgrader metadata), every markdown cell a translation. Each translated markdown cell carries the
hash of the English cell it translates (``metadata.labxds.en``), so a change to the English text
shows up here (and in tests/course/test_zh_twins.py) until the translation follows and is stamped.
docs/i18n.md says how to translate a lesson.
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
ENGLISH_DIR = ROOT / "notebooks"
ZH_DIR = ENGLISH_DIR / "zh-CN"
#: Han characters (CJK Unified Ideographs) and the full-width punctuation Chinese text uses.
CJK = re.compile(r"[\u4e00-\u9fff\u3000-\u303f\uff00-\uffef]")
TODO = "<!-- TODO: 翻译 -->"

__all__ = ["CJK", "ENGLISH_DIR", "ZH_DIR", "Problem", "english_hash", "english_notebooks", "problems", "prose"]


@dataclass(frozen=True)
class Problem:
    """Something a twin gets wrong: which notebook, which cell (None: the notebook), what."""

    notebook: str
    cell: int | None
    what: str

    def __str__(self) -> str:
        where = self.notebook if self.cell is None else f"{self.notebook} cell {self.cell}"
        return f"{where}: {self.what}"


def english_notebooks() -> list[Path]:
    return sorted(ENGLISH_DIR.glob("*.ipynb"))


def english_hash(source: str) -> str:
    """What a translated markdown cell records of the English cell it translates."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]


def prose(markdown: str) -> str:
    """The words of a markdown cell, without code, links' targets, URLs and HTML comments."""
    text = re.sub(r"```.*?```", " ", markdown, flags=re.S)
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    text = re.sub(r"https?://\S+", " ", text)
    return re.sub(r"<!--.*?-->", " ", text, flags=re.S)


def _words(markdown: str) -> list[str]:
    return re.findall(r"[A-Za-z]{3,}", prose(markdown))


def _load(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def problems(name: str) -> list[Problem]:
    """What is wrong with the twin of notebooks/``name`` (which must exist)."""
    english = _load(ENGLISH_DIR / name)
    twin = _load(ZH_DIR / name)
    found: list[Problem] = []
    if len(twin.cells) != len(english.cells):
        found.append(Problem(name, None, f"{len(twin.cells)} cells, the English notebook has {len(english.cells)}: "
                                         "keep the cells one for one (tools/zh_twins.py sync copies the code)"))
    for i, (en, zh) in enumerate(zip(english.cells, twin.cells)):
        if en.cell_type != zh.cell_type:
            found.append(Problem(name, i, f"a {zh.cell_type} cell where the English has a {en.cell_type} cell"))
            continue
        if en.cell_type == "code":
            if zh.source != en.source:
                found.append(Problem(name, i, "code differs from the English notebook's (tools/zh_twins.py sync)"))
            if zh.metadata.get("nbgrader") != en.metadata.get("nbgrader"):
                found.append(Problem(name, i, "nbgrader metadata differs from the English notebook's"))
            continue
        if TODO in zh.source:
            found.append(Problem(name, i, "not translated yet (it says TODO)"))
        elif len(_words(en.source)) >= 3 and not CJK.search(prose(zh.source)):
            found.append(Problem(name, i, "markdown without Chinese: translate it"))
        stamp = zh.metadata.get("labxds", {}).get("en")
        if stamp != english_hash(en.source):
            what = "not stamped" if stamp is None else "the English cell changed since it was translated"
            found.append(Problem(name, i, f"{what}: update the translation, then tools/zh_twins.py stamp {name} {i}"))
    return found


def _sync(names: list[str]) -> None:
    for name in names:
        english, path = _load(ENGLISH_DIR / name), ZH_DIR / name
        twin = _load(path)
        if len(twin.cells) != len(english.cells):
            print(f"{name}: {len(twin.cells)} cells, English {len(english.cells)}: align them by hand", file=sys.stderr)
            continue
        for en, zh in zip(english.cells, twin.cells):
            if en.cell_type == zh.cell_type == "code":
                zh.source = en.source
                zh.metadata = en.metadata
        nbformat.write(twin, path)


def _new(name: str) -> None:
    english, path = _load(ENGLISH_DIR / name), ZH_DIR / name
    if path.exists():
        raise SystemExit(f"{path} exists")
    for cell in english.cells:
        if cell.cell_type == "markdown":
            cell.source = f"{TODO}\n{cell.source}"
    ZH_DIR.mkdir(exist_ok=True)
    nbformat.write(english, path)
    print(f"{path}: translate each markdown cell (remove the TODO line), then tools/zh_twins.py stamp {name}")


def _stamp(name: str, cells: list[int]) -> None:
    english, path = _load(ENGLISH_DIR / name), ZH_DIR / name
    twin = _load(path)
    for i, (en, zh) in enumerate(zip(english.cells, twin.cells)):
        if zh.cell_type == "markdown" and (not cells or i in cells):
            if TODO in zh.source:
                print(f"{name} cell {i}: still says TODO, not stamped", file=sys.stderr)
                continue
            zh.metadata.setdefault("labxds", {})["en"] = english_hash(en.source)
    nbformat.write(twin, path)


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "check"
    names = [p.name for p in english_notebooks()]
    if command == "sync":
        _sync(argv[1:] or [n for n in names if (ZH_DIR / n).exists()])
    elif command == "new" and len(argv) == 2:
        _new(argv[1])
    elif command == "stamp" and len(argv) >= 2:
        _stamp(argv[1], [int(c) for c in argv[2:]])
    elif command == "check":
        missing = [n for n in names if not (ZH_DIR / n).exists()]
        found = [p for n in names if (ZH_DIR / n).exists() for p in problems(n)]
        for n in missing:
            print(f"{n}: no Chinese twin yet (notebooks/zh-CN/{n})")
        for p in found:
            print(p)
        return 1 if missing or found else 0
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
