"""The notebook layer of lessons 10-14: traffic charts (live and static), the behaviour panel,
and the gRPC backend toggle."""

from __future__ import annotations

import time

import pytest

from labxds.lab import EchoService
from labxds.lab.traffic import Traffic
from labxds.notebook.charts import LiveChart, traffic_figure, traffic_png

PNG = b"\x89PNG\r\n\x1a\n"


def _traffic_with_a_failure() -> Traffic:
    svc = EchoService("service1").start()
    traffic = Traffic(svc.url, rate=50).start()
    try:
        time.sleep(0.5)
        traffic.mark("failing")
        svc.set_behaviour(error_rate=1.0)
        time.sleep(0.5)
    finally:
        traffic.stop()
        svc.stop()
    return traffic


def test_the_chart_shows_what_the_traffic_recorded():
    traffic = _traffic_with_a_failure()
    fig = traffic_figure(traffic, bucket=0.25, latency=True)
    ok_bars, failed_bars = fig.axes[0].containers
    buckets = traffic.per_second(0.25)
    drawn = buckets[:len(ok_bars)]  # a sliver of a last bucket is left out
    assert len(buckets) - len(drawn) <= 1 and len(drawn) >= 3
    assert [round(b.get_height() * r["seconds"]) for b, r in zip(ok_bars, drawn)] == [r["ok"] for r in drawn]
    assert [round(b.get_height() * r["seconds"]) for b, r in zip(failed_bars, drawn)] == [r["failed"] for r in drawn]
    assert sum(r["failed"] for r in drawn) > 0
    assert any(t.get_text().strip() == "failing" for t in fig.axes[0].texts)
    assert f"{traffic.summary()['failed']} failed" in fig._suptitle.get_text()
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "latency (ms)"
    assert traffic_png(traffic).startswith(PNG)


def test_live_chart_redraws_until_the_traffic_stops(tmp_path):
    svc = EchoService("service1").start()
    try:
        traffic = Traffic(svc.url, rate=30).start()
        chart = LiveChart(traffic, every=0.1, display=False)  # no kernel here: redraws go nowhere
        time.sleep(0.5)
        final = chart.stop()
    finally:
        svc.stop()
    assert not traffic.running
    assert final.data.startswith(PNG)
    assert chart.save(tmp_path / "out" / "chart.png").read_bytes().startswith(PNG)


@pytest.mark.envoy
def test_behaviour_panel_and_grpc_toggle_drive_the_lab():
    import labxds
    from envoy_helpers import free_port

    from labxds.notebook import BehaviourPanel, GrpcBackendToggle, Lab
    from labxds.notebook.proxyless import grpc_topology

    lab = Lab(xds_port=0, admin_port=0, listener_port=free_port()).start(progress=False)
    try:
        panel = BehaviourPanel(lab, "service1")
        panel.error_rate.value = 100  # what dragging the slider does
        assert lab.behaviour("service1").error_rate == 1.0
        assert "failing 100%" in panel.state.value
        panel.set(delay=0.5, error_rate=0)
        assert (panel.delay.value, panel.error_rate.value) == (0.5, 0)
        assert lab.behaviour("service1") == labxds.lab.echo.Behaviour(delay=0.5)
        panel.reset.click()
        assert lab.behaviour("service1").normal and "normal" in panel.state.value

        backends = lab.grpc_backends(["alpha", "beta"])
        client = lab.grpc_client("greeter", "grpc-client")

        def snapshot(backend: str, version: str) -> labxds.Snapshot:
            return labxds.Snapshot([
                labxds.api_listener("greeter", "r"), labxds.route_configuration("r", "c"), labxds.cluster("c"),
                labxds.load_assignment("c", backends.endpoints(backend))], version=version)  # fmt: skip

        toggle = GrpcBackendToggle(lab, client, snapshot, ["alpha", "beta"], calls=4)
        toggle.value = "alpha"
        assert toggle.last_error is None and toggle.answers == ["alpha"] * 4
        toggle.value = "beta"
        assert toggle.last_error is None and toggle.answers == ["beta"] * 4
        assert [h["version"] for h in toggle.history] == ["grpc-1", "grpc-2"]
        assert "ACKed grpc-2" in toggle.status.value
        _assert_drawn_in_chinese(lambda: grpc_topology(lab, client).png)  # lesson 12's picture
    finally:
        lab.stop()


def _assert_drawn_in_chinese(draw):
    """``draw()`` under zh_CN makes a PNG whose Chinese labels have their glyphs: matplotlib uses
    the Han font the diagrams use, not DejaVu Sans (which warns "Glyph ... missing" into the cell)."""
    import warnings

    from labxds.i18n import set_language
    from labxds.notebook.diagrams import han_font

    if han_font() is None:
        pytest.skip("no font with Han characters (requirements.txt installs noto-cjk-sans-otc)")
    set_language("zh_CN")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            png = draw()
    finally:
        set_language(None)
    assert png.startswith(PNG)
    missing = [str(w.message) for w in caught if "missing from font" in str(w.message)]
    assert not missing, missing[:3]


def test_the_chart_in_chinese_has_its_glyphs():
    traffic = _traffic_with_a_failure()
    _assert_drawn_in_chinese(lambda: traffic_png(traffic, latency=True, title="service1 failing"))
