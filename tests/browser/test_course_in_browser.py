"""The course in a real browser: JupyterLab as `make lab` starts it, driven by Chromium.

tests/course/test_notebooks.py runs every notebook through nbclient, which never draws a widget.
Here a learner's path is taken with the mouse: open the notebook in JupyterLab, run it from the
Run menu, click the widgets, and check what the page shows against what Envoy itself reports
(its admin /config_dump and a request through its listener, from this process).

Each notebook is run up to its cleanup cell (Run > Run All Above Selected Cell), so that what
it started is still there to click; the cleanup cell is then run on its own and must succeed.
Every step fails on what nbclient cannot see: a widget that does not draw, an output that
reports an error, a table whose rows wrap, an error in the page's console. Screenshots of each
step go to test-output/browser/.
"""

from __future__ import annotations

from typing import Any

import re

import httpx
import pytest
from browser_course import (
    INSTRUCTOR,
    INSTRUCTOR_LAST_PUSH,
    INSTRUCTOR_STDERR,
    LESSON_4,
    Dashboard,
    Toggle,
    envoy_versions,
    learners_table,
    served_by,
)
from browser_lab import ConsoleWatch, JupyterLabServer, NotebookPage, Screenshots, wait_until
from playwright.sync_api import expect

HAN = re.compile(r"[\u4e00-\u9fff]")
pytestmark = [pytest.mark.browser, pytest.mark.envoy, pytest.mark.timeout(300)]  # a guard against hangs: each takes 20-40 s


def refused(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
    except httpx.ConnectError:
        return True
    return False


def test_lesson_4_toggle_pushes_service2_with_a_click(
    jupyterlab: JupyterLabServer, page: Any, console: ConsoleWatch, shots: Screenshots
) -> None:
    _lesson_4(jupyterlab, page, console, shots)


def test_lesson_4_in_chinese_with_the_chinese_interface(
    jupyterlab_zh: JupyterLabServer, page: Any, console: ConsoleWatch, shots: Screenshots
) -> None:
    """`make lab-zh`: JupyterLab's menus and status bar in Chinese (the pinned language pack), the
    Chinese lesson 4, whose checks, captions and toggle speak Chinese; the toggle works as in English."""
    assert jupyterlab_zh.locale == "zh_CN" and jupyterlab_zh.course == "zh-CN"
    page.goto(jupyterlab_zh.default_page())  # where `make lab-zh` opens: the Chinese lessons
    expect(page.locator(".jp-DirListing-item", has_text="01_setting_up.ipynb")).to_be_visible(timeout=30_000)
    expect(page.locator(".jp-BreadCrumbs")).to_contain_text("zh-CN")
    nb = _lesson_4(jupyterlab_zh, page, console, shots, before_cleanup=_assert_chinese_page)
    assert nb.name == LESSON_4


def _assert_chinese_page(nb: NotebookPage, toggle: Toggle) -> None:
    """What a learner of the Chinese edition reads: the interface and the lesson in Chinese."""
    page = nb.page
    for menu, chinese in (("File", "文件"), ("Edit", "编辑"), ("Run", "运行"), ("Kernel", "内核")):
        assert nb.server.ui(menu, "menu") == chinese
        expect(page.get_by_role("menuitem", name=chinese, exact=True)).to_be_visible()
    expect(page.get_by_text("| 空闲").first).to_be_visible()  # the kernel's status
    expect(nb.panel.get_by_text("学习目标：").first).to_be_attached()  # the lesson's own text
    assert HAN.search(toggle.status()), toggle.state()
    expect(toggle.box.get_by_text("上游", exact=True).first).to_be_attached()  # the buttons' label
    checks = [o["text"] for o in nb.outputs() if o["text"].lstrip().startswith("✓")]
    assert len(checks) == 2 and all(HAN.search(c) for c in checks), checks
    captions = nb.panel.locator(".jp-OutputArea-output table caption").all_inner_texts()
    assert captions and all(HAN.search(c) for c in captions), captions


def _lesson_4(server: JupyterLabServer, page: Any, console: ConsoleWatch, shots: Screenshots,
              before_cleanup: Any = None) -> NotebookPage:
    """Lesson 4 from the Run menu, then its toggle clicked to service2, checked against Envoy."""
    jupyterlab = server
    nb = NotebookPage(page, jupyterlab, LESSON_4).open()
    shots.take("opened")
    nb.run_all_but_last()
    shots.take("ran")
    nb.assert_clean()
    console.assert_clean()
    toggle = Toggle.find(nb)
    expect(toggle.box).to_have_count(1)
    toggle.box.scroll_into_view_if_needed()
    expect(toggle.button("service2")).to_be_visible()
    shots.take("toggle")

    # The lesson ends its steps back on service1: so does Envoy, and so does the page once it has
    # drawn the kernel's last widget updates (they may arrive after the cell's reply).
    before = envoy_versions(jupyterlab.admin_url, "dynamic_active_clusters")["example_proxy_cluster"]
    assert served_by(jupyterlab.listener_url) == "service1"
    wait_until(lambda: toggle.selected() == ["service1"] and toggle.acked_version() == before, 20,
               f"the toggle on service1 at Envoy's version {before}", show=toggle.state)  # fmt: skip

    toggle.button("service2").click()
    wait_until(lambda: toggle.acked_version() not in (None, before) and set(toggle.served_by()) == {"service2"},
               20, "the click on service2: a new version ACKed, requests served by service2", show=toggle.state)  # fmt: skip
    shots.take("clicked-service2")
    after = toggle.acked_version()
    assert int(after) > int(before), toggle.state()
    assert toggle.selected() == ["service2"], toggle.state()
    # Envoy's own view: the cluster at the version the page shows, and the next request
    assert envoy_versions(jupyterlab.admin_url, "dynamic_active_clusters") == {"example_proxy_cluster": after}
    assert served_by(jupyterlab.listener_url) == "service2"
    nb.assert_clean()
    console.assert_clean()
    if before_cleanup is not None:
        before_cleanup(nb, toggle)

    nb.run_last()  # the cleanup: closes the widget, stops the lab
    shots.take("cleaned-up")
    nb.assert_clean()
    expect(toggle.box).to_have_count(0, timeout=20_000)
    wait_until(lambda: refused(jupyterlab.admin_url), 10, "the lab's Envoy stopped by the cleanup cell")
    return nb


def test_instructor_dashboard_pushes_to_the_learner_clicked(
    jupyterlab: JupyterLabServer, page: Any, console: ConsoleWatch, shots: Screenshots
) -> None:
    nb = NotebookPage(page, jupyterlab, INSTRUCTOR, expected_stderr=INSTRUCTOR_STDERR).open()
    shots.take("opened")
    nb.run_all_but_last()
    shots.take("ran")
    nb.assert_clean()
    console.assert_clean()
    dash = Dashboard.find(nb)
    expect(dash.box).to_have_count(1)
    learners = learners_table(nb)
    assert sorted(learners) == ["alice", "bob", "carol"], learners
    dash.box.scroll_into_view_if_needed()
    expect(dash.push_button()).to_be_visible()
    shots.take("dashboard")

    # alice's Envoy before: /api goes to service2 (she solved route-api in step 8)
    alice = learners["alice"]
    assert alice["listener"].endswith(f":{jupyterlab.ports['listener']}"), alice
    routes = {name: envoy_versions(lab["admin"], "dynamic_route_configs") for name, lab in learners.items()}
    assert served_by(alice["listener"], "/api") == "service2"

    # the page has drawn the kernel's last widget updates (they may arrive after the cell's reply)
    wait_until(lambda: dash.message() == INSTRUCTOR_LAST_PUSH and dash.selected_learners() == ["bob"], 20,
               "the dashboard as the notebook left it", show=dash.state)  # fmt: skip

    dash.learner_option("alice").click()  # a plain click: alice alone, bob no longer
    assert dash.selected_learners() == ["alice"], dash.state()
    dash.snapshot_select().select_option(label="fix-nack: solution")  # the sandbox, all to service1
    shots.take("alice-selected")
    dash.push_button().click()
    wait_until(lambda: dash.message() == "pushed fix-nack: solution to alice: ACKed", 20,
               "the push to alice, ACKed", show=dash.state)  # fmt: skip
    dash.box.locator(".widget-html").last.scroll_into_view_if_needed()
    shots.take("pushed")

    # Envoy's own view: alice's routes at a new version, the others' untouched
    now = {name: envoy_versions(lab["admin"], "dynamic_route_configs") for name, lab in learners.items()}
    assert now["alice"] != routes["alice"] and set(now["alice"]) == {"local_route"}, (routes, now)
    assert now["bob"] == routes["bob"] and now["carol"] == routes["carol"], (routes, now)
    assert served_by(alice["listener"], "/api") == "service1"
    # and the dashboard's row for alice says so: her own snapshot, at that version
    version = now["alice"]["local_route"]
    wait_until(lambda: dash.rows()["alice"]["RDS"] in (version, version[:8] + "…"), 10,
               f"alice's row shows her RDS version {version}", show=lambda: dash.rows()["alice"])  # fmt: skip
    assert dash.rows()["alice"]["snapshot"].startswith("own: sandbox"), dash.rows()["alice"]
    nb.assert_clean()
    console.assert_clean()

    nb.run_last()  # the cleanup: closes the dashboard, stops every learner's lab and the workshop
    shots.take("cleaned-up")
    nb.assert_clean()
    expect(dash.box).to_have_count(0, timeout=20_000)
    for lab in learners.values():
        wait_until(lambda url=lab["admin"]: refused(url), 10, f"{lab['admin']} stopped by the cleanup cell")
