"""The lessons' widgets driven from code against a real lab (control plane, Envoy, echo services).

Every port is picked by the kernel (bind port 0): other test sessions share this machine.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from envoy_helpers import free_port

import labxds
from labxds.notebook import (
    CanarySlider,
    Lab,
    StatusPanel,
    UpstreamToggle,
    canary_snapshot,
    next_version,
)
from labxds.notebook.tables import status_table

pytestmark = pytest.mark.envoy


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab(xds_port=free_port(), admin_port=0, listener_port=free_port()).start(progress=False)
    yield lab
    lab.stop()


def _served(lab: Lab, n: int = 4) -> list[str]:
    return list(lab.curl(n)["served_by"])


# --------------------------------------------------------------------------- UpstreamToggle


def test_toggle_starts_on_what_envoy_serves_and_pushes_on_change(lab: Lab) -> None:
    lab.push(lab.sandbox_snapshot("service1", version="1"))
    toggle = UpstreamToggle(lab)
    assert toggle.value == "service1"  # read from the served snapshot, nothing pushed
    assert toggle.history == []

    toggle.value = "service2"  # what a click does
    assert toggle.last_error is None
    assert toggle.acked_version == "2"
    assert list(toggle.served["served_by"]) == ["service2"] * toggle.requests
    assert _served(lab) == ["service2"] * 4
    host, port = lab.upstream("service2")
    assert lab.sandbox_endpoint() == f"{host}:{port}"
    assert "ACKed version 2" in toggle.status.value
    assert "service2" in toggle.table.value and "<caption" in toggle.table.value
    assert "latency (ms)" in toggle.table.value  # units in the header, through tables.styled

    toggle.value = "service1"
    assert toggle.acked_version == "3"
    assert _served(lab) == ["service1"] * 4
    assert [h["version"] for h in toggle.history] == ["2", "3"]
    assert lab.clusters().loc[0, "version_info"] == "3"


def test_toggle_without_snapshot_waits_for_a_choice(lab: Lab) -> None:
    toggle = UpstreamToggle(lab)
    assert toggle.value is None
    assert "pick an upstream" in toggle.status.value
    assert lab.curl(1).loc[0, "error"] == "connection refused"
    toggle.value = "service1"
    assert toggle.acked_version == "1"
    assert _served(lab, 2) == ["service1"] * 2


def test_toggle_shows_envoys_rejection_and_stays_usable() -> None:
    # Envoy cannot bind the sandbox listener where this socket already listens: it NACKs.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        lab = Lab(xds_port=free_port(), admin_port=0, listener_port=busy).start(progress=False)
        try:
            toggle = UpstreamToggle(lab)
            toggle.value = "service2"  # must not raise out of the observer
            assert isinstance(toggle.last_error, labxds.PushRejected)
            assert "cannot bind" in str(toggle.last_error)
            assert "not applied" in toggle.status.value and "cannot bind" in toggle.status.value
            assert toggle.history[-1]["acked"] is False
            status = status_table(lab.cp).set_index("type")
            assert status.loc["LDS", "nacked"] == "1"
        finally:
            lab.stop()


def test_next_version_follows_the_highest_numeric_version(lab: Lab) -> None:
    assert next_version(lab) == "1"
    lab.push(lab.sandbox_snapshot("service1", version="7"))
    assert next_version(lab) == "8"


def test_widgets_display_as_their_ipywidgets(lab: Lab) -> None:
    lab.push(lab.sandbox_snapshot("service1", version="1"))
    for w, css in ((UpstreamToggle(lab), "labxds-upstream-toggle"), (StatusPanel(lab.cp), "labxds-status-panel")):
        bundle = w._repr_mimebundle_()
        assert "application/vnd.jupyter.widget-view+json" in bundle
        assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == w.widget.model_id
        assert css in w.widget._dom_classes  # what a page (and tests/browser) finds it by
        w.close()


# --------------------------------------------------------------------------- CanarySlider


def test_canary_slider_pushes_weights_and_measures_the_split(lab: Lab) -> None:
    slider = CanarySlider(lab, "service1", "service2", requests=200)
    assert slider.value == 0 and slider.last_error is None
    assert "labxds-canary-slider" in slider.widget._dom_classes
    assert slider.counts == {"service1": 200, "service2": 0}

    slider.value = 10
    assert slider.last_error is None
    assert 4 <= slider.counts["service2"] <= 40, slider.counts  # ~20 expected; binomial sd ~4
    assert slider.counts["service1"] + slider.counts["service2"] == 200
    routes = lab.routes()
    assert routes.loc[0, "cluster"] == "service1 90%, service2 10%"
    assert slider.acked_version == routes.loc[0, "version_info"]
    assert "observed split over 200 requests" in slider.chart.value

    slider.value = 100
    assert slider.counts == {"service1": 0, "service2": 200}
    observed = slider.observed()
    assert list(observed["weight"]) == [0, 10, 100]
    assert list(observed["version"]) == ["1", "2", "3"]


def test_canary_snapshot_checks_the_weight(lab: Lab) -> None:
    with pytest.raises(ValueError, match="percentage"):
        canary_snapshot(lab, "service1", "service2", 101, "1")


# --------------------------------------------------------------------------- StatusPanel


def test_status_panel_shows_nodes_versions_and_the_last_nack(lab: Lab) -> None:
    lab.push(lab.sandbox_snapshot("service1", version="1"))
    panel = StatusPanel(lab.cp)
    assert not panel.live
    frame = panel.frame().set_index("type")
    assert list(frame["acked"][["CDS", "LDS", "RDS"]]) == ["1", "1", "1"]
    assert frame["connected"].all() and (frame["node"] == lab.node_id).all()
    assert panel.last_nack is None
    assert lab.node_id in panel.header.value and "1 node(s) connected" in panel.header.value

    bad = labxds.Snapshot(
        [*lab.sandbox_snapshot("service1").resources(labxds.CLUSTER).values(),
         *lab.sandbox_snapshot("service1").resources(labxds.ROUTE).values(),
         *lab.sandbox_snapshot("service1").resources(labxds.LISTENER).values(),
         labxds.http_listener("listener_admin", lab.admin_port, "local_route")],
        version="2",
    )  # fmt: skip
    with pytest.raises(labxds.PushRejected):
        lab.push(bad)
    before = panel.refreshes
    panel.click()  # the refresh button
    assert panel.refreshes == before + 1
    nack = panel.last_nack
    assert nack is not None and nack["type"] == "LDS" and nack["version"] == "2"
    assert "cannot bind" in nack["error"]
    assert "last NACK" in panel.table.value and "cannot bind" in panel.table.value

    lab.push(lab.sandbox_snapshot("service2", version="3"))
    panel.refresh()
    frame = panel.frame().set_index("type")
    assert frame.loc["LDS", "acked"] == "3" and frame.loc["LDS", "last_nack"] == "2"


def test_status_panel_live_refresh_runs_on_the_given_loop_only(lab: Lab) -> None:
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, name="kernel-loop", daemon=True)
    runner.start()
    try:
        panel = StatusPanel(lab.cp, live=True, loop=loop)
        assert panel.live
        threads: list[str] = []
        original = panel.refresh

        def recording_refresh() -> None:
            threads.append(threading.current_thread().name)
            original()

        panel.refresh = recording_refresh  # type: ignore[method-assign]
        lab.push(lab.sandbox_snapshot("service1", version="1"))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "1" not in set(panel.frame()["acked"]):
            time.sleep(0.02)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not threads:
            time.sleep(0.02)
        assert threads and set(threads) == {"kernel-loop"}
        time.sleep(0.2)  # let the last scheduled refresh run
        assert '<td' in panel.table.value and ">1<" in panel.table.value

        panel.stop_live()
        assert not panel.live
        count = len(threads)
        lab.push(lab.sandbox_snapshot("service2", version="2"))
        time.sleep(0.3)
        assert len(threads) == count  # unhooked: nothing scheduled any more
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(timeout=5)
        loop.close()


def test_status_panel_live_needs_a_loop(lab: Lab) -> None:
    with pytest.raises(RuntimeError, match="asyncio loop"):
        StatusPanel(lab.cp, live=True)


def test_status_panel_accepts_a_lab_and_survives_a_control_plane_restart(lab: Lab) -> None:
    lab.push(lab.sandbox_snapshot("service1", version="1"))
    panel = StatusPanel(lab)
    assert panel.control_plane is lab.control_plane
    lab.control_plane.stop()
    panel.refresh()
    assert "STOPPED" in panel.header.value
    lab.control_plane.start()
    lab.control_plane.wait_for_node(lab.node_id, timeout=30)
    panel.refresh()
    assert "serving" in panel.header.value and lab.node_id in panel.header.value


# --------------------------------------------------------------------------- tables.styled


def test_styled_shows_timestamps_as_utc_time_of_day() -> None:
    # The lessons' trace and config_dump tables carry timestamps; styled keeps them short.
    import re

    import pandas as pd

    from labxds.notebook import styled

    df = pd.DataFrame({
        "time": [pd.Timestamp("2026-01-02 03:04:05.678901"), pd.NaT],
        "last_updated": pd.to_datetime(["2026-01-02T03:04:05.5+01:00", None], utc=True),
        "latency_ms": [1.26, None],
    })  # fmt: skip
    text = re.sub(r"<[^>]+>", " ", styled(df, "when").to_html()).split()
    assert text == ["when", "time", "(UTC)", "last", "updated", "(UTC)", "latency", "(ms)",
                    "03:04:05.678", "02:04:05.500", "1.3"]  # fmt: skip
