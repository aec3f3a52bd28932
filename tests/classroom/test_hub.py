"""A class on a real JupyterHub: three learners, their own Envoys, the instructor's workshop service.

JupyterHub (from PyPI) runs deploy/jupyterhub/jupyterhub_config.py with its real proxy
(configurable-http-proxy, from npm), the shared-password authenticator and the local spawner.
alice, bob and carol log in through the hub's REST API and start their servers; in a kernel of
their own server each runs the learner notebook's first steps (their Envoy and echo services join
the workshop with the node id, ports, token and addresses the spawner hook gave them). The
instructor sees them through the workshop service behind the hub's authenticated proxy.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import pytest

from hub_harness import Hub, missing_parts
from labxds.classroom import WorkshopClient, routes

pytestmark = [pytest.mark.envoy, pytest.mark.hub, pytest.mark.timeout(300)]

LEARNERS = ["alice", "bob", "carol"]
WORKSHOP = "/services/workshop"

JOIN = """
import os
from labxds import Lab
from labxds.classroom import LearnerSession
lab = Lab(control_plane=os.environ["LABXDS_CONTROL_PLANE"], node_id=os.environ["LABXDS_NODE_ID"],
          token=os.environ["LABXDS_TOKEN"]).start(progress=False)
me = LearnerSession(os.environ["LABXDS_DESK"], lab, token=os.environ["LABXDS_TOKEN"])
print(lab.node_id, lab.admin_port, lab.listener_port, list(lab.curl(2)["served_by"]))
"""


def learner_counters(hub: Hub, name: str) -> dict[str, int]:
    """Envoy's own update counters, read through the hub's proxy as the learner."""
    r = hub.get(f"/user/{name}/envoy-admin/stats?format=json&filter=update_success", name)
    assert r.status_code == 200, r.text
    stats = {s["name"]: s.get("value", 0) for s in r.json()["stats"] if "name" in s}
    return {k: stats[k] for k in ("cluster_manager.cds.update_success", "listener_manager.lds.update_success")}


def class_status(hub: Hub) -> dict[str, dict]:
    r = hub.get(f"{WORKSHOP}/v1/class", "instructor")
    assert r.status_code == 200, r.text
    return {row["learner"]: row for row in r.json()["learners"]}


def wait_for(predicate, timeout: float, what: str):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:g}s")
        time.sleep(0.2)


def listening_addresses(pids: set[int]) -> set[str]:
    """The addresses the processes ``pids`` listen on (TCP, from /proc)."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                address = fields[1].split(":")[0]
                if len(address) == 8:
                    out.add(".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)))
                else:
                    out.add("::1" if address == "0" * 24 + "01000000" else address)
    return out


def learner_pids(name: str) -> set[int]:
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"LABXDS_NODE_ID={name}".encode() in environ:
                pids.add(int(entry))
    return pids


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory):
    reason = missing_parts()
    if reason:
        pytest.skip(reason)
    hub = Hub(tmp_path_factory.mktemp("hub"), LEARNERS).start()
    try:
        hub.login("instructor")
        for name in LEARNERS:
            hub.login(name)
            hub.start_server(name)
        for name in LEARNERS:
            hub.wait_ready(name)
        hub.kernels = {name: hub.kernel(name) for name in LEARNERS}
        hub.joined = {}

        def join(name: str) -> None:
            hub.joined[name] = hub.kernels[name].execute(JOIN)

        threads = [threading.Thread(target=join, args=(n,)) for n in LEARNERS]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        missing = [n for n in LEARNERS if n not in hub.joined]
        assert not missing, f"these learners' kernels failed to join: {missing}\n{hub.log_tail()}"
        yield hub
    finally:
        hub.stop()


def test_learners_join_with_their_hub_names_ports_and_tokens(hub: Hub):
    ports = set()
    for name in LEARNERS:
        node, admin, listener, served = hub.joined[name].split(" ", 3)
        assert node == name
        assert served.strip() == "['service1', 'service1']"  # the class default, through their listener
        ports |= {int(admin), int(listener)}
    assert len(ports) == 2 * len(LEARNERS), f"learners share ports: {hub.joined}"
    status = class_status(hub)
    assert set(LEARNERS) <= set(status)
    for name in LEARNERS:
        row = status[name]
        assert row["connected"], row
        assert row["CDS"] and row["LDS"] and row["RDS"], f"{name} has not ACKed the class snapshot: {row}"


def test_envoy_admin_and_listener_through_the_hub_proxy_only(hub: Hub):
    r = hub.get("/user/alice/envoy-admin/server_info", "alice")
    assert r.status_code == 200 and r.json()["node"]["id"] == "alice"
    assert "service1" in hub.get("/user/alice/envoy/", "alice").text
    assert hub.get("/user/alice/envoy-admin/server_info", "bob").status_code == 403  # not bob's server
    assert hub.get("/user/alice/envoy-admin/server_info").status_code in (302, 403)  # nobody's
    for name in LEARNERS:
        addresses = listening_addresses(learner_pids(name))
        assert addresses and addresses <= {"127.0.0.1", "::1"}, f"{name}'s processes listen on {addresses}"


def test_a_push_to_one_learner_changes_only_their_envoy(hub: Hub):
    before = {name: learner_counters(hub, name) for name in LEARNERS}
    instructor = WorkshopClient(f"{hub.url}{WORKSHOP}", hub.tokens["instructor"])  # as from their notebook
    try:
        instructor.push(routes({"/api": "service2", "/": "service1"}), "bob")
    finally:
        instructor.close()
    after = {name: learner_counters(hub, name) for name in LEARNERS}
    assert after["bob"]["cluster_manager.cds.update_success"] > before["bob"]["cluster_manager.cds.update_success"]
    for name in ("alice", "carol"):
        assert after[name] == before[name], f"{name}'s Envoy heard of bob's push"
    assert hub.kernels["bob"].execute("print(lab.curl(1, path='/api').loc[0, 'served_by'])").strip() == "service2"
    status = class_status(hub)
    assert status["bob"]["snapshot"].startswith("own: routes")
    assert status["alice"]["snapshot"].startswith("class: ")


def test_the_dashboard_is_for_instructors_through_the_hub(hub: Hub):
    import httpx

    def browser_login(name: str, password: str) -> httpx.Client:
        browser = httpx.Client(base_url=hub.url, follow_redirects=True, timeout=30, trust_env=False)
        browser.get("/hub/login")
        r = browser.post("/hub/login", data={"username": name, "password": password,
                                             "_xsrf": browser.cookies.get("_xsrf", "")})  # fmt: skip
        assert r.status_code == 200, r.text[:300]
        return browser

    browser = browser_login("instructor", hub.instructor_password)
    try:
        page = browser.get(f"{WORKSHOP}/")
        assert page.status_code == 200 and "labxds workshop" in page.text, page.text[:500]
        assert str(page.url).startswith(f"{hub.url}{WORKSHOP}/")  # after the hub's OAuth round trip
        for name in LEARNERS:
            assert f"<td>{name}</td>" in page.text
    finally:
        browser.close()
    browser = browser_login("carol", hub.class_password)
    try:
        assert browser.get(f"{WORKSHOP}/").status_code == 403
    finally:
        browser.close()
    assert hub.get(f"{WORKSHOP}/v1/class", "carol").status_code == 403
    assert hub.get(f"{WORKSHOP}/v1/class").status_code in (302, 403)
    # enrollment is the hub's: a learner cannot get another learner's token
    r = hub.client.post(f"{hub.url}{WORKSHOP}/v1/enroll/alice", headers=hub.headers("carol"))
    assert r.status_code == 403


def test_a_learner_server_restarts_with_the_same_identity_and_snapshot(hub: Hub):
    versions = {t: class_status(hub)["bob"][t] for t in ("CDS", "LDS", "RDS")}
    hub.stop_server("bob")
    wait_for(lambda: not class_status(hub)["bob"]["connected"], 30, "bob's Envoy did not go away with his server")
    hub.start_server("bob")
    hub.wait_ready("bob")
    hub.kernels["bob"] = hub.kernel("bob")
    out = hub.kernels["bob"].execute(JOIN + "print(lab.curl(1, path='/api').loc[0, 'served_by'])")
    node, admin, listener, rest = out.split(" ", 3)
    assert node == "bob"
    assert rest.strip().splitlines()[-1] == "service2", out  # his own snapshot, back
    row = wait_for(lambda: (r := class_status(hub)["bob"])["connected"] and r, 30, "bob did not reconnect")
    assert {t: row[t] for t in versions} == versions
    assert row["snapshot"].startswith("own: routes")
    assert json.loads(hub.get(f"/user/bob/envoy-admin/server_info", "bob").text)["node"]["id"] == "bob"
    assert re.fullmatch(r"\d+", admin) and re.fullmatch(r"\d+", listener)


def service_pid(hub: Hub) -> int | None:
    store = str(hub.dir / "data" / "workshop.sqlite")
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"classroom" in cmdline and store.encode() in cmdline:
                return int(entry)
    return None


def test_the_workshop_service_restarts_without_losing_anything(hub: Hub):
    """The hub restarts its service; the SQLite store brings back the class, and the learners'
    Envoys resync holding what they had: Envoy applies no update (its own counters stay put)."""
    import signal

    status = class_status(hub)
    versions = {n: {t: status[n][t] for t in ("CDS", "LDS", "RDS")} for n in LEARNERS}
    counters = {n: learner_counters(hub, n) for n in LEARNERS}
    old = service_pid(hub)
    assert old is not None
    os.kill(old, signal.SIGKILL)  # the workshop's process, which this test's hub started
    new = wait_for(lambda: (pid := service_pid(hub)) not in (None, old) and hub._service_up() and pid, 60,
                   "the hub did not restart the workshop service")
    assert new != old
    status = wait_for(lambda: (s := class_status(hub)) and all(s[n]["connected"] for n in LEARNERS) and s, 60,
                      "the learners' Envoys did not reconnect")
    for n in LEARNERS:
        assert {t: status[n][t] for t in ("CDS", "LDS", "RDS")} == versions[n], n
        assert learner_counters(hub, n) == counters[n], f"{n}'s Envoy was sent its configuration again"
    assert status["bob"]["snapshot"].startswith("own: routes")
    # and the class goes on: a push reaches carol only
    r = hub.client.post(f"{hub.url}{WORKSHOP}/v1/class/push", headers=hub.headers("instructor"),
                        json={"spec": {"template": "sandbox", "upstream": "service2"}, "to": "carol"})
    assert r.status_code == 200, r.text
    assert learner_counters(hub, "alice") == counters["alice"]
    assert learner_counters(hub, "carol") != counters["carol"]
