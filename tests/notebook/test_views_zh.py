"""The course's views in Chinese (LABXDS_LANG=zh_CN), on a real Envoy: the pictures' labels, drawn
with a font that has Han characters and nothing written to stderr; configs_index; check's display."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest
from envoy_helpers import free_port

from labxds.envoy.jq import configs_index
from labxds.i18n import set_language
from labxds.notebook import Lab, course, diagrams

pytestmark = pytest.mark.envoy
HAN = re.compile(r"[\u4e00-\u9fff]")



@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    running = Lab(xds_port=free_port(), admin_port=0, listener_port=free_port()).start(progress=False)
    yield running
    running.stop()


@pytest.fixture
def chinese() -> Iterator[None]:
    set_language("zh_CN")
    yield
    set_language(None)


def test_the_pictures_speak_chinese(lab: Lab, chinese: None, caplog: pytest.LogCaptureFixture,
                                    capfd: pytest.CaptureFixture[str]) -> None:
    assert diagrams.han_font(), "no font with Han characters: is noto-cjk-sans-otc installed (requirements.txt)?"
    mark = lab.mark()
    lab.push(lab.sandbox_snapshot("service1", version=lab.next_version()))
    with caplog.at_level(logging.WARNING):
        topology = lab.topology()
        sequence = lab.sequence(since=mark, title="Version 1: the first snapshot")
    titles = {b.key: b.title for b in topology.boxes}
    assert titles["cp"] == "控制平面（ADS）" and titles["admin"] == "管理接口" and titles["listener"] == "监听器"
    assert any(a.label == "ADS 流（gRPC）：由 Envoy 发起连接" for a in topology.arrows), topology.arrows
    assert sequence.title == "版本 1：第一个快照"
    labels = [r.label for r in sequence.rows]
    assert any(re.fullmatch(r"CDS 响应 · 版本 \d+ · nonce \d+  \[example_proxy_cluster\]", label) for label in labels), labels
    assert any(label.startswith("LDS ACK · 版本") for label in labels), labels
    assert not [r for r in caplog.records if "font" in r.getMessage().lower()], caplog.records  # no missing glyphs
    assert "findfont" not in capfd.readouterr().err


def test_configs_index_and_a_check_in_chinese(lab: Lab, chinese: None) -> None:
    rows = configs_index(lab.admin.config_dump())
    assert rows[0]["holds"].startswith("Envoy 启动时使用的启动配置") and all(HAN.search(r["holds"]) for r in rows if r["holds"])
    shown = course.check("1.1", lab, "not-the-node-id")
    assert not shown.passed and shown.title == "这个 Envoy 是谁？"
    assert "提示" in repr(shown) and "提示" in shown._repr_html_() and HAN.search(shown.detail), repr(shown)
    table = course.exercises(1)
    assert list(table["title"]) == ["这个 Envoy 是谁？", "Envoy 知道哪些集群？"]


def test_the_labs_tables_show_chinese_headers_and_other_frames_stay_as_pandas_shows_them(lab: Lab,
                                                                                       chinese: None) -> None:
    import pandas as pd

    from labxds.notebook.tables import lab_table_html

    lab.push(lab.sandbox_snapshot("service1", version=lab.next_version()))
    rows = lab.curl(4)
    shown = lab_table_html(rows)
    assert shown is not None and "响应服务" in shown and "served_by" not in shown, shown
    failed = rows[rows.status == 200]  # filtered: the index is still row numbers
    assert "响应服务" in (lab_table_html(failed) or "")
    summary = rows.describe()  # an index that means something: as pandas shows it
    assert lab_table_html(summary) == summary._repr_html_()
    own = pd.DataFrame({"served_by": ["x"]})  # the learner's own frame: as pandas shows it
    assert lab_table_html(own) == own._repr_html_()
    set_language("en")
    assert lab_table_html(rows) == rows._repr_html_()


def test_a_chinese_kernel_shows_lab_tables_with_chinese_headers() -> None:
    """In a real kernel (LABXDS_LANG=zh_CN): importing labxds.notebook registers the display."""
    import os

    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import pandas as pd\n"
        "from labxds.notebook import tables\n"
        "tables.lab_table(pd.DataFrame({'served_by': ['service1'], 'latency_ms': [1.5]}))")])
    env_before = os.environ.get("LABXDS_LANG")
    os.environ["LABXDS_LANG"] = "zh_CN"
    try:
        NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    finally:
        if env_before is None:
            os.environ.pop("LABXDS_LANG", None)
        else:
            os.environ["LABXDS_LANG"] = env_before
    html = nb.cells[0].outputs[0]["data"]["text/html"]
    assert "响应服务" in html and "延迟 (ms)" in html, html


def test_what_each_change_cost_shows_its_phases_in_chinese(lab: Lab, chinese: None) -> None:
    import time

    from labxds.notebook import phases_table
    from labxds.notebook.tables import lab_table_html

    lab.push(lab.sandbox_snapshot("service1", version=lab.next_version()))
    traffic = lab.traffic(rate=20)
    time.sleep(0.3)
    traffic.mark("retries")
    time.sleep(0.3)
    traffic.stop()
    phases = phases_table(traffic)
    assert list(phases.phase) == ["start", "retries"]  # code looks phases up by the labels it wrote
    shown = lab_table_html(phases) or ""
    assert "阶段" in shown and ">开始<" in shown and ">重试<" in shown and ">retries<" not in shown, shown


def test_a_hosts_health_shows_in_chinese_and_stays_english_for_code(lab: Lab, chinese: None) -> None:
    from labxds.notebook.tables import lab_table_html

    lab.push(lab.sandbox_snapshot("service1", version=lab.next_version()))
    hosts = lab.hosts("example_proxy_cluster")
    assert list(hosts.health) == ["healthy"]  # code compares the words labxds wrote
    shown = lab_table_html(hosts) or ""
    assert ">健康<" in shown and ">healthy<" not in shown, shown
    joined = hosts.assign(health="failed active health check, ejected (outlier detection)")
    assert ">主动健康检查失败, 已驱逐（异常点检测）<" in (lab_table_html(joined) or "")
