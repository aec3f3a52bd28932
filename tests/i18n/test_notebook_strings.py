"""The captions and titles the lessons' code cells hand to labxds are in the catalogue, translated,
and shown translated: the Chinese twins share the English code cells (labxds/i18n/notebooks.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

from labxds.i18n import set_language
from labxds.i18n.notebooks import code_strings, notebook_strings

REPO = Path(__file__).resolve().parents[2]
PO = REPO / "labxds" / "i18n" / "locale" / "zh_CN" / "LC_MESSAGES" / "labxds.po"
HAN = re.compile(r"[\u4e00-\u9fff]")


def test_the_extractor_finds_captions_and_titles() -> None:
    code = ('tables.styled(lab.where(), "What runs where")\n'
            'display(tables.styled(df, caption="routes"))\n'
            'lab.sequence(since=mark, title="Two switches")\n'
            'styled(df)\nprint("not this")\nlab.sequence(title=name)\n')
    assert [text for _line, text in code_strings(code)] == ["What runs where", "routes", "Two switches"]
    assert list(code_strings("%time lab.curl()")) == []  # a magic: not Python, nothing found


def test_the_extractor_finds_what_a_cell_prints_through_tr() -> None:
    code = ('print(tr("✓ {n} requests, none failed").format(n=n))\n'
            'ax.set_title(tr("asked vs observed"))\n'
            'print(f"{tr(\'user agent:\')} {agent}")\n'
            'print(tr(name), "not this")\n'
            'from labxds.i18n import _\nprint(_("with one:"))\n')
    assert [text for _line, text in code_strings(code)] == [
        "✓ {n} requests, none failed", "asked vs observed", "user agent:", "with one:"]


def test_the_extractor_finds_the_traffic_charts_title_and_marks() -> None:
    code = ('chart = LiveChart(traffic, latency=True, title="service1 failing")\n'
            'traffic.mark("listener_0 left out")\nmark = lab.mark()\ntraffic.mark(label)\n')
    assert [text for _line, text in code_strings(code)] == ["service1 failing", "listener_0 left out"]


def test_a_mark_on_the_traffic_chart_is_drawn_translated(chinese: None) -> None:
    from labxds.lab.traffic import Traffic
    from labxds.notebook.charts import traffic_figure

    traffic = Traffic("http://127.0.0.1:9")  # never started: the chart of no requests, with its marks
    traffic.mark("retries")
    traffic.mark("a label of my own")
    assert [t.get_text() for t in traffic_figure(traffic).axes[0].texts] == [" 重试", " a label of my own"]


def test_every_caption_of_the_notebooks_has_its_chinese() -> None:
    with PO.open("rb") as fh:
        catalog = read_po(fh, locale="zh_CN", domain="labxds")
    missing = []
    found = 0
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        for cell, text in notebook_strings(json.loads(path.read_text(encoding="utf-8"))):
            found += 1
            message = catalog.get(text)
            if message is None or not message.string or not HAN.search(message.string):
                missing.append(f"{path.name} cell {cell}: {text!r}")
    assert found >= 20, found
    assert not missing, "run `make i18n` and translate in tools/zh_CN.json:\n" + "\n".join(missing)


@pytest.fixture
def chinese():
    set_language("zh_CN")
    yield
    set_language(None)


def test_a_caption_is_shown_translated(chinese: None) -> None:
    import pandas as pd

    from labxds.notebook import tables

    html = tables.styled(pd.DataFrame([{"component": "Envoy", "address": "127.0.0.1:1"}]), "What runs where").to_html()
    assert "什么运行在哪里" in html and "组件" in html, html
    assert tables.styled(pd.DataFrame([{"a": 1}]), "a caption of my own").caption == "a caption of my own"
