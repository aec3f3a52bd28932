"""The instructor's dashboard: rows per learner, NACKs, progress, sorting, the push selector, live refresh.

Learners here are the tests' own xDS clients (tests/xds_client.py): they ACK and NACK exactly when
told. The dashboard's live refresh is scheduled on an asyncio loop this test runs, as a kernel
would, so the test sees which thread redrew.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from xds_client import CLUSTER, SotwClient, wait_processed

from labxds.classroom import CheckResult, Workshop
from labxds.notebook import Dashboard
from labxds.notebook.dashboard import SORTS
from labxds.xds import Snapshot, cluster

NAMES = ("ann", "ben", "cat")


def snap(tag: str) -> Snapshot:
    return Snapshot([cluster(f"c-{tag}", [("127.0.0.1", 9)], type="STATIC")], version=tag)


@pytest.fixture
def setup():
    ws = Workshop(port=0, desk_port=None).start()
    ws.broadcast(snap("v1"), wait=False)
    clients = {n: SotwClient(ws.address, n) for n in NAMES}
    loop = asyncio.new_event_loop()
    try:
        for client in clients.values():
            client.ack(client.subscribe(CLUSTER))
        for n in NAMES:
            ws.control_plane.tracker.wait_connected(n, 5)
        wait_processed(ws.control_plane, clients.values())  # no hook of the setup fires later
        yield ws, clients, loop
    finally:
        for client in clients.values():
            client.close()
        ws.stop()
        loop.close()


def pump(loop: asyncio.AbstractEventLoop, seconds: float = 0.2) -> None:
    """Let the 'kernel' loop run the refreshes scheduled from other threads."""
    loop.run_until_complete(asyncio.sleep(seconds))


def wait_until(loop: asyncio.AbstractEventLoop, predicate, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        pump(loop, 0.05)
    raise AssertionError("condition not reached")


def test_one_row_per_learner_with_acked_versions(setup) -> None:
    ws, clients, loop = setup
    dash = Dashboard(ws, loop=loop)
    assert "labxds-dashboard-widget" in dash.widget._dom_classes  # what a page finds it by
    wait_until(loop, lambda: all(dash.frame()["CDS"] == "v1"))
    df = dash.frame()
    assert list(df["learner"]) == sorted(NAMES)
    assert df["connected"].all()
    assert df["connected_since"].notna().all() and df["last_seen"].notna().all()
    assert (df["snapshot"].str.startswith("class:")).all()
    assert df["last_nack"].isna().all() and not df["nack_open"].any()
    assert list(df.columns[:8]) == ["learner", "connected", "connected_since", "last_seen", "CDS", "EDS", "LDS", "RDS"]
    assert "ann" in dash.table.value and "v1" in dash.table.value
    assert set(dash.learners.options) == set(NAMES)

    clients["ben"].close()
    wait_until(loop, lambda: "2/3 learners connected" in dash.header.value)  # redrawn by the live refresh
    assert not dash.frame().set_index("learner").loc["ben", "connected"]


def test_a_nack_from_one_learner_shows_in_its_row_and_sorts_first(setup) -> None:
    ws, clients, loop = setup
    dash = Dashboard(ws, loop=loop)
    ws.push(snap("v2"), list(NAMES), wait=False)
    for name, client in clients.items():
        response = client.recv()
        if name == "ben":
            client.nack(response, "cluster c-v2: nope, not today", last_good="v1")
        else:
            client.ack(response)
    wait_processed(ws.control_plane, clients.values())
    wait_until(loop, lambda: "nope, not today" in dash.table.value)  # redrawn by the live refresh
    df = dash.frame().set_index("learner")
    assert "CDS vv2: cluster c-v2: nope, not today" == df.loc["ben", "last_nack"]
    assert df.loc["ben", "CDS"] == "v1"  # the last version ben ACKed
    assert df.loc["ann", "CDS"] == "v2" and df.loc["cat", "CDS"] == "v2"
    assert df.loc[["ann", "cat"], "last_nack"].isna().all()
    assert "nope, not today" in dash.table.value
    assert "1 open NACK" in dash.header.value

    # Envoy puts the reason last, after a dump of the refused proto: the table keeps both ends
    dump = " ".join(f"field_{i} {{ }}" for i in range(100))
    ws.push(snap("v3"), ["ben"], wait=False)
    clients["ben"].nack(clients["ben"].recv(), f"listener_0: {dump}: StatPrefix: value length must be at least 1",
                        last_good="v1")
    wait_processed(ws.control_plane, clients.values())
    wait_until(loop, lambda: "value length must be at least 1" in dash.table.value)
    assert "field_50" not in dash.table.value and "CDS vv3: listener_0: field_0" in dash.table.value

    dash.sort.value = "last NACK"
    assert dash.frame().loc[0, "learner"] == "ben"
    assert dash.table.value.index("ben") < dash.table.value.index("ann")


def test_progress_reported_from_another_thread_refreshes_on_the_loop(setup) -> None:
    ws, clients, loop = setup
    dash = Dashboard(ws, loop=loop)
    pump(loop)  # refreshes scheduled before the test's own events
    before = dash.refreshes

    def report() -> None:
        ws.record(CheckResult("route-api", "cat", True, detail="ok"))
        ws.record(CheckResult("canary", "cat", False, hint="90/10"))
        ws.record(CheckResult("route-api", "ben", False, hint="order"))

    worker = threading.Thread(target=report)
    worker.start()
    worker.join()
    assert dash.refreshes == before  # nothing redrawn from the worker's thread
    pump(loop)
    assert dash.refreshes == before + 1  # three events, one coalesced refresh
    assert dash.refresh_threads == {threading.get_ident()}
    df = dash.frame().set_index("learner")
    # cat's client only takes clusters: the control plane cannot confirm a route exercise (✓?)
    assert df.loc["cat", "passed"] == 1 and df.loc["cat", "progress"] == "route-api ✓?, canary ✗"
    assert df.loc["ben", "progress"] == "route-api ✗"
    dash.sort.value = "progress"
    assert dash.frame().loc[0, "learner"] == "cat"
    assert set(SORTS) >= {"learner", "connected since", "last seen", "last NACK", "progress"}


def test_push_a_prepared_snapshot_to_selected_learners(setup) -> None:
    ws, clients, loop = setup
    ws.prepare("step 2", snap("v2"))
    dash = Dashboard(ws, loop=loop)
    assert "step 2" in dash.snapshots.options

    acked: dict[str, str] = {}

    def ack(name: str) -> None:
        response = clients[name].recv()
        acked[name] = response.version_info
        clients[name].ack(response)

    ackers = [threading.Thread(target=ack, args=(n,)) for n in ("ann", "cat")]
    for t in ackers:
        t.start()
    dash.learners.value = ("ann", "cat")
    dash.snapshots.value = "step 2"
    dash.click()  # waits for both ACKs
    for t in ackers:
        t.join(5)
    assert dash.last_push["ok"], dash.last_push
    assert acked == {"ann": "v2", "cat": "v2"}
    clients["ben"].expect_nothing(0.3)  # ben was not selected
    assert "ACKed" in dash.message.value
    df = dash.frame().set_index("learner")
    assert df.loc["ann", "snapshot"].startswith("own:") and df.loc["ben", "snapshot"].startswith("class:")

    dash.learners.value = ()
    dash.click()
    assert not dash.last_push["ok"] and "choose learners" in dash.message.value


def test_live_refresh_needs_a_loop(setup) -> None:
    ws, _, _ = setup
    with pytest.raises(RuntimeError, match="kernel's asyncio loop"):
        Dashboard(ws)
    still = Dashboard(ws, live=False)
    count = still.refreshes
    ws.record(CheckResult("canary", "ann", True))
    assert still.refreshes == count and not still.live
    still.refresh()
    assert still.frame().set_index("learner").loc["ann", "passed"] == 1


def test_escaped_newlines_of_envoys_nack_text_read_as_one_line() -> None:
    from labxds.notebook.dashboard import _one_line

    envoy_text = "Error adding/updating listener(s) listener_0: rds {\\n  config_source {\\n    ads {\\n    }\\n"
    assert _one_line(envoy_text) == "Error adding/updating listener(s) listener_0: rds { config_source { ads { }"
    assert _one_line("two\nlines") == "two lines" and _one_line(None) is None
