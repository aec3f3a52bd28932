"""The course's notebooks as the browser tests see them: one small section per notebook.

When a lesson changes (its file name, what its cells leave running, what its widgets show),
this is the file to keep in step. Widgets are found by what they are and say, never by position:
the CSS class the widget sets (``labxds-upstream-toggle``), a button's text ("service2"), a
table's own class (``labxds-dashboard``), a label ("snapshot").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import httpx
from browser_lab import NotebookPage

__all__ = [
    "INSTRUCTOR",
    "INSTRUCTOR_LAST_PUSH",
    "INSTRUCTOR_STDERR",
    "LESSON_4",
    "Dashboard",
    "lab_text",
    "Toggle",
    "envoy_versions",
    "learners_table",
    "served_by",
]


# --------------------------------------------------------------------------- Envoy's own view


def envoy_versions(admin_url: str, resource: str) -> dict[str, str]:
    """Name -> version_info of Envoy's dynamic clusters ("dynamic_active_clusters") or routes
    ("dynamic_route_configs"), from its /config_dump."""
    dump = httpx.get(f"{admin_url}/config_dump", params={"resource": resource}, timeout=5).json()
    out = {}
    for entry in dump.get("configs", []):
        body = entry.get("cluster") or entry.get("route_config") or {}
        out[body.get("name", "?")] = entry.get("version_info", "")
    return out


def served_by(listener_url: str, path: str = "/") -> str | None:
    """Who answered a request through Envoy's listener: the echo services' "Request served by X"."""
    text = httpx.get(f"{listener_url}{path}", timeout=5).text
    match = re.search(r"Request served by (\S+)", text)
    return match.group(1) if match else None


def _table_rows(table: Any) -> list[dict[str, str]]:
    """An HTML table of the page as rows of header -> cell text."""
    return table.evaluate(
        """t => {
            const head = [...t.querySelectorAll('thead th')].map(th => th.textContent.trim());
            return [...t.querySelectorAll('tbody tr')].map(tr => Object.fromEntries(
                [...tr.children].map((td, i) => [head[i] ?? String(i), td.textContent.trim()])));
        }"""
    )


def lab_text(message: str, locale: str = "en") -> str:
    """One of labxds's messages as the lab shows it in ``locale`` (the kernel's LABXDS_LANG)."""
    from labxds.i18n import _, set_language

    set_language(locale)
    try:
        return _(message)
    finally:
        set_language(None)


# --------------------------------------------------------------------------- lesson 4

LESSON_4 = "04_upstream_toggle.ipynb"  # in notebooks/ and, the Chinese edition's, in notebooks/zh-CN/
#: What the toggle says after Envoy's ACK (labxds/notebook/widgets.py), in English.
ACKED = "Envoy ACKed version {version} in {ms} ms ({per_type})"


@dataclass
class Toggle:
    """Lesson 4's UpstreamToggle as drawn: the buttons, the status line, the curl table, in the
    lab's language (``locale``)."""

    box: Any  # the widget's locator
    locale: str = "en"

    @classmethod
    def find(cls, nb: NotebookPage) -> Toggle:
        return cls(nb.panel.locator(".labxds-upstream-toggle"), nb.server.locale)

    def button(self, upstream: str) -> Any:
        return self.box.get_by_role("button", name=upstream, exact=True)

    def selected(self) -> list[str]:
        return [b.inner_text() for b in self.box.locator("button.mod-active").all()]

    def status(self) -> str:
        return self.box.locator(".widget-html").first.inner_text()

    def acked_version(self) -> str | None:
        """The version the status line says Envoy ACKed (its sentence in the lab's language)."""
        said = re.escape(lab_text(ACKED, self.locale))
        pattern = said.replace(r"\{version\}", r"(?P<version>[^\s（(]+)")
        pattern = re.sub(r"\\\{\w+\\\}", ".*?", pattern)
        match = re.search(pattern, self.status())
        return match.group("version") if match else None

    def served_by(self) -> list[str]:
        """The "served by" column of the table the toggle shows after its push."""
        table = self.box.locator("table")
        if not table.count():
            return []
        header = lab_text("served by", self.locale)
        return [r.get(header, "") for r in _table_rows(table.first)]

    def state(self) -> dict[str, Any]:
        """What the toggle shows, for failure messages."""
        return {"selected": self.selected(), "status": self.status(), "served by": self.served_by()}


# --------------------------------------------------------------------------- the instructor's notebook

INSTRUCTOR = "workshop_instructor.ipynb"
#: Step 8 forges a learner's report on purpose: the workshop logs that the control plane contradicts it.
#: What the dashboard says after the notebook's last push from its selector (step 9).
INSTRUCTOR_LAST_PUSH = "pushed canary 90/10 to bob: ACKed"
INSTRUCTOR_STDERR = [r"labxds workshop: bob reports route-api passed, but [^\n]*"]


def learners_table(nb: NotebookPage) -> dict[str, dict[str, str]]:
    """The learners' labs as step 2 lists them: learner -> {"listener": url, "admin": url}."""
    for table in nb.panel.locator(".jp-OutputArea-output table").all():
        rows = _table_rows(table)
        if rows and {"learner", "listener", "admin"} <= set(rows[0]):
            return {r["learner"]: {"listener": r["listener"], "admin": r["admin"]} for r in rows}
    raise AssertionError(f"{nb.name}: no table of learners with their listener and admin URLs")


@dataclass
class Dashboard:
    """The instructor's dashboard as drawn: its table, the push selector, the message line."""

    box: Any

    @classmethod
    def find(cls, nb: NotebookPage) -> Dashboard:
        return cls(nb.panel.locator(".labxds-dashboard-widget"))

    def rows(self) -> dict[str, dict[str, str]]:
        """learner -> column -> text, as the table shows them."""
        return {r["learner"]: r for r in _table_rows(self.box.locator("table.labxds-dashboard"))}

    def table(self) -> Any:
        return self.box.locator("table.labxds-dashboard")

    def learner_option(self, name: str) -> Any:
        return self.box.locator(".widget-select-multiple select option", has_text=re.compile(f"^{re.escape(name)}$"))

    def selected_learners(self) -> list[str]:
        return self.box.locator(".widget-select-multiple select").evaluate(
            "s => [...s.selectedOptions].map(o => o.textContent)"
        )

    def snapshot_select(self) -> Any:
        return self.box.locator(".widget-dropdown", has_text="snapshot").locator("select")

    def push_button(self) -> Any:
        return self.box.get_by_role("button", name="push to selected")

    def message(self) -> str:
        return self.box.locator(".widget-html").last.inner_text()

    def state(self) -> dict[str, Any]:
        """What the selector and the message line show, for failure messages."""
        return {"learners": self.selected_learners(), "snapshot": self.snapshot_select().input_value(),
                "message": self.message()}  # fmt: skip
