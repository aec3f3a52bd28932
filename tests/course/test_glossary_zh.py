"""The Chinese glossary (docs/glossary.zh-CN.md) and the English one (docs/glossary.md) list the same
terms with the same Chinese words, and the Chinese lessons point learners to the Chinese one."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _rows(path: Path) -> list[list[str]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("| ") and "**" in line:
            rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def test_both_glossaries_have_the_same_terms_and_chinese_words() -> None:
    english = {row[0]: row[1] for row in _rows(REPO / "docs" / "glossary.md")}  # term -> 中文
    chinese = {row[1]: row[0] for row in _rows(REPO / "docs" / "glossary.zh-CN.md")}  # term -> 中文
    def terms(row_term: str) -> set[str]:
        return set(re.findall(r"\*\*(.+?)\*\*", row_term))

    en_terms = {t for term in english for t in terms(term)}
    zh_terms = {t for term in chinese for t in terms(term)}
    assert en_terms == zh_terms, f"only in glossary.md: {sorted(en_terms - zh_terms)}; only in glossary.zh-CN.md: {sorted(zh_terms - en_terms)}"
    for term, words in english.items():
        twin = next(zh for t, zh in chinese.items() if terms(t) == terms(term))
        if words:
            assert twin.startswith(words.split("（")[0].split("、")[0]), f"{term}: 中文 {words!r} in glossary.md, {twin!r} in glossary.zh-CN.md"


def test_the_chinese_edition_links_the_chinese_glossary() -> None:
    readme = (REPO / "README.zh-CN.md").read_text(encoding="utf-8")
    assert "](docs/glossary.zh-CN.md)" in readme
    first = (REPO / "notebooks" / "zh-CN" / "01_setting_up.ipynb").read_text(encoding="utf-8")
    assert "../../docs/glossary.zh-CN.md" in first
