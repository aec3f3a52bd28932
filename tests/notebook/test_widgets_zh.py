"""The widgets and the instructor's dashboard in Chinese (issue 15): under ``zh_CN`` their labels,
status lines and tables speak Chinese, Envoy's own words stay, and what code reads (the sort
choices' values, the frames' column names) stays as it was."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from envoy_helpers import free_port

import labxds
from labxds.classroom import Workshop
from labxds.i18n import set_language
from labxds.notebook import CanarySlider, Dashboard, Lab, StatusPanel, UpstreamToggle

HAN = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(autouse=True)
def _chinese(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("LABXDS_LANG", "JPY_SESSION_NAME"):
        monkeypatch.delenv(name, raising=False)
    set_language("zh_CN")
    yield
    set_language(None)


@pytest.mark.envoy
def test_the_lessons_widgets_speak_chinese() -> None:
    lab = Lab(xds_port=free_port(), admin_port=0, listener_port=free_port()).start(progress=False)
    try:
        lab.push(lab.sandbox_snapshot("service1", version="1"))
        panel = StatusPanel(lab.cp)
        assert panel.button.description == "刷新"
        assert "控制平面正在" in panel.header.value and "已连接 1 个节点" in panel.header.value
        assert "按节点和类型" in panel.table.value and "已确认（ACK）" in panel.table.value  # caption, header

        clash = labxds.http_listener("listener_admin", lab.admin_port, "local_route")
        with pytest.raises(labxds.PushRejected) as info:
            lab.push(labxds.Snapshot([*lab.sandbox_snapshot("service1").resources(labxds.CLUSTER).values(),
                                      *lab.sandbox_snapshot("service1").resources(labxds.ROUTE).values(),
                                      *lab.sandbox_snapshot("service1").resources(labxds.LISTENER).values(), clash],
                                     version="2"))
        assert "拒绝了 LDS" in str(info.value) and "cannot bind" in str(info.value)  # Envoy's words stay
        panel.refresh()
        assert "最近的 NACK" in panel.table.value and "cannot bind" in panel.table.value
        assert "监听器的端口在本机已被占用" in panel.table.value  # what Envoy's words mean

        toggle = UpstreamToggle(lab)
        assert toggle.buttons.description == "上游"
        toggle.value = "service2"
        assert "Envoy 在" in toggle.status.value and "确认（ACK）了版本" in toggle.status.value
        assert "个请求" in toggle.table.value and "响应服务" in toggle.table.value

        slider = CanarySlider(lab, "service1", "service2", value=10, requests=20)
        assert "确认（ACK）了版本" in slider.status.value and "20 个请求的实际分流" in slider.chart.value
        slider.close()
        toggle.close()
        panel.close()
    finally:
        lab.stop()


def test_the_dashboard_speaks_chinese_and_keeps_its_values() -> None:
    ws = Workshop(port=0, desk_port=None).start()
    try:
        ws.add_learner("alice")
        dash = Dashboard(ws, live=False)
        assert "控制平面正在" in dash.header.value and "名学员已连接" in dash.header.value
        labels = dict(dash.sort.options)
        assert labels["最近的 NACK"] == "last NACK" and labels["学员"] == "learner"  # shown in Chinese, valued in English
        dash.sort.value = "last NACK"  # what code (and the docs) set
        assert dash.push_button.description == "推送给选中的学员"
        assert ">学员<" in dash.table.value and ">最近的 NACK<" in dash.table.value
        assert list(dash.frame().columns[:2]) == ["learner", "connected"]  # the frame keeps its names
        outcome = dash.push_selected()
        assert not outcome["ok"] and HAN.search(outcome["error"])
        assert repr(ws).startswith("<Workshop") and "名学员" in repr(ws)
        dash.close()
    finally:
        ws.stop()
