"""Every ``_("...")`` / ``N_("...")`` literal in the package is in the zh_CN catalogue, wherever it
sits: Babel's extractor does not look inside f-strings, so ``f"{_('Hint:')} ..."`` would ship
untranslated while tests/i18n/test_i18n.py, which trusts the extractor, stays green."""

from __future__ import annotations

import ast
from pathlib import Path

from babel.messages.pofile import read_po

REPO = Path(__file__).resolve().parents[2]
PO = REPO / "labxds" / "i18n" / "locale" / "zh_CN" / "LC_MESSAGES" / "labxds.po"


def _literals() -> dict[str, str]:
    found = {}
    for path in sorted((REPO / "labxds").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("_", "N_")
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                found[node.args[0].value] = f"{path.relative_to(REPO)}:{node.lineno}"
    return found


def test_every_literal_message_is_in_the_catalogue() -> None:
    with PO.open("rb") as fh:
        catalog = read_po(fh, locale="zh_CN", domain="labxds")
    missing = [f"{where}: {text!r}" for text, where in sorted(_literals().items())
               if catalog.get(text) is None or not catalog.get(text).string]
    assert not missing, "not in the catalogue (inside an f-string? take it out, then `make i18n`):\n" + "\n".join(missing)
