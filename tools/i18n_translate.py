"""Fill labxds's zh_CN catalogue from tools/zh_CN.json (msgid -> msgstr), then compile it.

    .venv/bin/python tools/i18n_translate.py

The JSON file is where translators work (one entry per English message). `pybabel update` keeps
the .po in step with the code; this script copies the translations in and compiles the .mo.
"""

from __future__ import annotations

import json
import pathlib
import sys

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po

ROOT = pathlib.Path(__file__).resolve().parents[1]
PO = ROOT / "labxds" / "i18n" / "locale" / "zh_CN" / "LC_MESSAGES" / "labxds.po"


def main() -> int:
    table = json.loads((ROOT / "tools" / "zh_CN.json").read_text(encoding="utf-8"))
    with PO.open("rb") as fh:
        catalog = read_po(fh, locale="zh_CN", domain="labxds")
    missing = []
    for message in catalog:
        if not message.id:
            continue
        key = message.id if isinstance(message.id, str) else message.id[0]
        text = table.get(key)
        if text is None:
            missing.append(key)
            continue
        message.string = text if isinstance(message.id, str) else tuple(text if isinstance(text, list) else [text])
        message.flags.discard("fuzzy")
    catalog.project, catalog.version = "labxds", "0.1.0"
    with PO.open("wb") as fh:
        write_po(fh, catalog, width=100, omit_header=False, sort_output=True)
    with PO.with_suffix(".mo").open("wb") as fh:
        write_mo(fh, catalog)
    for key in missing:
        print(f"untranslated: {key!r}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
