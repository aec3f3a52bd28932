"""JupyterLab in a real browser: the server `make lab` starts, Chromium, and a notebook page.

Nothing here knows a lesson: the steps of each notebook live in ``browser_course.py``. What is
here is what any notebook needs: start JupyterLab with `make lab`'s own command line, open a
notebook, run it from the Run menu, wait for the run to end, and look at what the page shows
that nbclient cannot (widgets drawn, error outputs, table rows that wrap, console errors).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nbformat
from envoy_helpers import free_ports
from playwright.sync_api import expect

REPO = Path(__file__).resolve().parents[2]
# Debian's Chromium (Playwright cannot download its own browsers here); LABXDS_CHROMIUM names
# another Chromium, for a machine where you cannot install Debian's package.
CHROMIUM = Path(os.environ.get("LABXDS_CHROMIUM") or "/usr/bin/chromium")
SHOTS = REPO / "test-output" / "browser"
SKIP_REASON = (
    f"browser tests did not run: {CHROMIUM} not found; install it with `apt-get install chromium` (root)"
)
# Headless, no GPU, and quiet: without the background-networking flags Chromium keeps trying to
# reach Google's services (updates, sync, field trials, QUIC probes); on a closed network that is
# a flood of failing connections. Each run also gets a fresh user-data-dir (conftest.py).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # runs as root in CI: Chromium's sandbox refuses root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 900}  # a laptop's screen: JupyterLab's output area is narrow
RUN_TIMEOUT = 120  # seconds for a notebook's run from the page

__all__ = [
    "CHROMIUM",
    "CHROMIUM_FLAGS",
    "SHOTS",
    "SKIP_REASON",
    "ConsoleWatch",
    "JupyterLabServer",
    "NotebookPage",
    "Screenshots",
    "free_ports",
    "han_fonts_env",
]


def han_fonts_env(workdir: Path) -> dict[str, str]:
    """The environment for a Chromium that draws Chinese: fontconfig's own configuration plus the
    Noto Sans CJK font requirements.txt installs (noto-cjk-sans-otc), so the screenshots of the
    Chinese edition show its characters without any system font package."""
    env = dict(os.environ)
    try:
        import noto_cjk_sans_otc
    except ImportError:
        return env
    conf = workdir / "fonts.conf"
    conf.write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE fontconfig SYSTEM "fonts.dtd">\n<fontconfig>\n'
        '  <include ignore_missing="yes">/etc/fonts/fonts.conf</include>\n'
        f"  <dir>{Path(str(noto_cjk_sans_otc.FONT_PATH)).parent}</dir>\n"
        f"  <cachedir>{workdir / 'fontconfig-cache'}</cachedir>\n</fontconfig>\n",
        encoding="utf-8",
    )
    env["FONTCONFIG_FILE"] = str(conf)
    return env


# --------------------------------------------------------------------------- the server


def make_lab_command(port: int, target: str = "lab") -> tuple[dict[str, str], list[str], dict[str, str]]:
    """`make lab`'s (or `make lab-zh`'s) own command line for ``port`` (read with ``make -n``): its
    variable assignments, its argv, and the JupyterLab settings the recipe writes first (path under
    the settings directory -> content; `make lab-zh` writes the interface's language). Read from the
    Makefile, so the test starts JupyterLab exactly as a learner does, and follows any change to the
    target's flags."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    out = subprocess.run(
        ["make", "-n", "-C", str(REPO), target, f"LAB_PORT={port}", f"VENV={sys.prefix}"],
        capture_output=True, text=True, timeout=30, env=env, check=True,
    ).stdout  # fmt: skip
    line = next((ln for ln in out.splitlines() if re.search(r"\bjupyter lab\b", ln)), None)
    assert line, f"`make -n {target}` shows no `jupyter lab` command:\n{out}"
    words = shlex.split(line)
    assignments: dict[str, str] = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        assignments[name] = value.replace(f"${name}", os.environ.get(name, ""))
    settings = {}
    for written in re.finditer(r"echo '(\{.*?\})' > \S*?user-settings/(\S+)", out):
        settings[written[2]] = written[1]
    return assignments, words, settings


#: JupyterLab's interface texts in Chinese, from the pinned language pack (requirements.txt).
def _language_pack() -> dict[str, list[str]]:
    import jupyterlab_language_pack_zh_CN

    path = Path(jupyterlab_language_pack_zh_CN.__file__).parent / "locale" / "zh_CN" / "LC_MESSAGES" / "jupyterlab.json"
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass
class JupyterLabServer:
    """JupyterLab as `make lab` starts it, serving a copy of notebooks/ in ``workdir``.

    ``workdir/notebooks`` is the copy (the command's ``--notebook-dir=notebooks`` is relative,
    so it runs in ``workdir``); the lab's own ports are free ones, passed to the kernels through
    the server's environment (LABXDS_*_PORT, as tests/course/test_notebooks.py does for nbclient).
    JupyterLab's own settings, workspaces and runtime files live in ``workdir`` too, so a
    developer's ~/.jupyter changes nothing here and nothing is left behind.
    """

    workdir: Path
    target: str = "lab"  # or "lab-zh": the Chinese course, with JupyterLab's interface in Chinese
    port: int = 0
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    root_dir: Path | None = None  # the copy's folder JupyterLab serves (notebooks/)
    course: str = ""  # the folder the target opens under it ("zh-CN" for lab-zh)
    notebook_dir: Path | None = None  # the lessons' folder: root_dir / course
    locale: str = "en"  # the interface's language, as the target's settings set it

    def start(self, timeout: float = 90.0) -> JupyterLabServer:
        shutil.copytree(REPO / "notebooks", self.workdir / "notebooks",
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints"))  # fmt: skip
        self.port, xds, admin, listener = free_ports(4)
        self.ports = {"xds": xds, "admin": admin, "listener": listener}
        assignments, argv, settings = make_lab_command(self.port, self.target)
        served = next((a.split("=", 1)[1] for a in argv if a.startswith("--notebook-dir=")), "notebooks")
        self.root_dir = self.workdir / served
        # the folder the file browser opens (lab-zh: notebooks/zh-CN, an absolute path): the copy's
        for i, arg in enumerate(argv):
            if arg.startswith("--ServerApp.preferred_dir="):
                preferred = Path(arg.split("=", 1)[1]).relative_to(REPO / served)
                self.course = preferred.as_posix()
                argv[i] = f"--ServerApp.preferred_dir={self.root_dir / preferred}"
        self.notebook_dir = self.root_dir / self.course
        env = {k: v for k, v in os.environ.items() if k != "LABXDS_LANG"}
        env.update(assignments)
        jupyter = self.workdir / "jupyter"
        for relative, content in settings.items():  # what the target writes before it starts JupyterLab
            written = jupyter / "lab-settings" / relative
            written.parent.mkdir(parents=True, exist_ok=True)
            written.write_text(content, encoding="utf-8")
            self.locale = json.loads(content).get("locale", self.locale)
        tmp = self.workdir / "tmp"  # Envoy's work dirs go here and are removed with it
        tmp.mkdir()
        env.update({
            "JUPYTER_TOKEN": self.token,
            "JUPYTER_CONFIG_DIR": str(jupyter / "config"),
            "JUPYTER_DATA_DIR": str(jupyter / "data"),
            "JUPYTER_RUNTIME_DIR": str(jupyter / "runtime"),
            "JUPYTERLAB_SETTINGS_DIR": str(jupyter / "lab-settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(jupyter / "lab-workspaces"),
            "IPYTHONDIR": str(jupyter / "ipython"),
            "TMPDIR": str(tmp),
            "LABXDS_XDS_PORT": str(xds),
            "LABXDS_ADMIN_PORT": str(admin),
            "LABXDS_LISTENER_PORT": str(listener),
            "LABXDS_MODE": "local",
        })  # fmt: skip
        self.log_path = self.workdir / "jupyterlab.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv, cwd=self.workdir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"JupyterLab exited ({self.proc.returncode}) at start:\n{self.log()}")
            try:
                if httpx.get(f"{self.base}/api/status", headers=self._auth, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"JupyterLab did not answer on port {self.port} in {timeout:.0f}s:\n{self.log()}")
            time.sleep(0.1)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def ui(self, text: str, context: str | None = None) -> str:
        """``text`` of JupyterLab's interface as this server shows it (its language pack's words)."""
        if self.locale == "en":
            return text
        pack = _language_pack()
        found = pack.get(f"{context}\x04{text}") if context else None
        found = found or pack.get(text)
        return found[0] if found and found[0] else text

    def url(self, notebook: str) -> str:
        """The notebook (of the course's folder) in a JupyterLab workspace of its own: the tabs an
        earlier test left open (and the kernels they would start) stay in theirs."""
        workspace = re.sub(r"\W", "-", Path(notebook).stem)
        path = f"{self.course}/{notebook}" if self.course else notebook
        return f"{self.base}/lab/workspaces/{workspace}/tree/{path}?token={self.token}"

    def default_page(self) -> str:
        """Where the target's JupyterLab opens (its default URL), with the token."""
        return f"{self.base}/?token={self.token}"

    @property
    def listener_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['listener']}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['admin']}"

    def log(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:] if self.log_path else ""

    def stop(self) -> None:
        """SIGTERM: the server shuts its kernels down (whose Envoys die with them), then exits."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def shutdown_kernels(self) -> None:
        """End every session and kernel (as File > Shut Down All Kernels would): what a notebook
        left running, Envoys included (they die with their kernel), is gone for the next test."""
        for session in httpx.get(f"{self.base}/api/sessions", headers=self._auth, timeout=10).json():
            httpx.delete(f"{self.base}/api/sessions/{session['id']}", headers=self._auth, timeout=30)
        for kernel in httpx.get(f"{self.base}/api/kernels", headers=self._auth, timeout=10).json():
            httpx.delete(f"{self.base}/api/kernels/{kernel['id']}", headers=self._auth, timeout=30)

    def wait_no_leftovers(self, timeout: float = 20.0) -> None:
        left: list[str] = []

        def all_gone() -> bool:
            left[:] = self.leftovers()
            return not left

        try:
            wait_until(all_gone, timeout, "kernels and Envoys gone")
        except AssertionError:
            raise AssertionError(f"still running after their kernels were shut down: {left}") from None

    def leftovers(self) -> list[str]:
        """Processes started from this server's temporary directory (kernels, whose connection
        files are there, and Envoys, whose work dirs are), the server itself aside."""
        mark = str(self.workdir).encode()
        found = []
        server = str(self.proc.pid) if self.proc is not None and self.proc.poll() is None else None
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if pid == server:  # its command line names the copy's folder (lab-zh's preferred_dir)
                continue
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if mark in cmdline:
                words = cmdline.replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{pid}: {words[:200]}")
        return found


# --------------------------------------------------------------------------- the page


class ConsoleWatch:
    """Every console 'error' message and uncaught exception of a page, less known noise."""

    #: (pattern, why it is harmless). Empty on purpose: JupyterLab 4.6 running lesson 4 and the
    #: instructor's notebook in Chromium logs no error at all (only debug lines), so any error is
    #: news. Add an entry only for noise that is understood, and say why it is harmless.
    BENIGN: list[tuple[str, str]] = []

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def _console(self, message: Any) -> None:
        if message.type == "error":
            where = message.location or {}
            self.errors.append(f"console.error: {message.text} ({where.get('url', '?')}:{where.get('lineNumber', '?')})")

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(re.search(p, e) for p, _ in self.BENIGN)]

    def assert_clean(self) -> None:
        errors = self.unexpected()
        assert not errors, "the page logged errors:\n" + "\n".join(errors)


class Screenshots:
    """Numbered screenshots of one test under test-output/browser/."""

    def __init__(self, page: Any, prefix: str) -> None:
        self.page = page
        self.prefix = prefix
        self.count = 0
        SHOTS.mkdir(parents=True, exist_ok=True)
        for old in SHOTS.glob(f"{prefix}-*.png"):
            old.unlink()

    def take(self, step: str) -> Path:
        self.count += 1
        path = SHOTS / f"{self.prefix}-{self.count:02d}-{step}.png"
        self.page.screenshot(path=str(path))
        return path


# What a code cell's prompt shows: "[ ]:" never run, "[*]:" running or queued, "[12]:" done.
_PROMPTS_JS = """panel => [...panel.querySelectorAll('.jp-Cell')].map(c =>
    c.classList.contains('jp-CodeCell') ? (c.querySelector('.jp-InputPrompt')?.textContent || '').trim() : null)"""

# Every output of the notebook, as the page shows it.
_OUTPUTS_JS = """panel => [...panel.querySelectorAll('.jp-Cell')].flatMap((cell, index) =>
    [...cell.querySelectorAll('.jp-OutputArea-output')].map(o => ({
        cell: index,
        mime: o.getAttribute('data-mime-type'),
        hidden: o.classList.contains('lm-mod-hidden'),
        widget: o.querySelector('.lm-Widget[class*="widget-"]') !== null,
        text: o.textContent,
    })))"""

# Rows that wrap: a cell whose text takes more than one line. The height of its text (a Range
# over it) is one line box for one line, two or more for a wrapped one.
_WRAPPED_JS = """table => {
    const wrapped = [];
    for (const cell of table.querySelectorAll('td, th')) {
        const style = getComputedStyle(cell);
        const size = parseFloat(style.fontSize);
        const line = parseFloat(style.lineHeight) || 1.2 * size;
        const range = document.createRange();
        range.selectNodeContents(cell);
        const height = range.getBoundingClientRect().height;
        if (height > 1.5 * Math.max(line, size)) {
            wrapped.push(`${cell.tagName.toLowerCase()} '${cell.innerText.slice(0, 60)}' is ${Math.round(height)}px high (one line: ${Math.round(line)}px)`);
        }
    }
    return wrapped;
}"""

# A widget output that did not draw: the manager's placeholder or error text, or the plain-text
# fallback a front end without the widget manager shows ("VBox(children=(...")
_WIDGET_FAILED = re.compile(r"Error displaying widget|Loading widget\.\.\.|^\s*[A-Z]\w*\((children|value|options|layout)=")


class NotebookPage:
    """One notebook opened in JupyterLab in ``page``; what a learner does with the mouse."""

    def __init__(self, page: Any, server: JupyterLabServer, name: str, *, expected_stderr: Sequence[str] = ()) -> None:
        """``expected_stderr``: patterns of what the notebook writes to stderr on purpose (each
        output's whole text must match one); any other stderr output is a failure."""
        self.page = page
        self.server = server
        self.name = name
        self.expected_stderr = [re.compile(p, re.S) for p in expected_stderr]
        self.count = 0  # cells in the notebook, once open
        self.panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
        self.cells = self.panel.locator(".jp-Notebook .jp-Cell")

    def open(self, timeout: float = 60.0) -> NotebookPage:
        # JupyterLab asks once whether to fetch Jupyter's news: answer No as a learner would, when
        # it shows, whatever the test is doing at that moment.
        ui = self.server.ui
        news = self.page.get_by_text(ui("Would you like to get notified about official Jupyter news?"))
        self.page.add_locator_handler(news, lambda: self.page.get_by_role("button", name=ui("No"), exact=True).click())
        self.page.goto(self.server.url(self.name))
        # JupyterLab adds a long notebook's cells to the page a batch at a time: wait for all of
        # them (as many as the file has), or "the last cell" would be one in the middle.
        assert self.server.notebook_dir is not None
        expected = len(nbformat.read(self.server.notebook_dir / self.name, as_version=4).cells)
        expect(self.cells).to_have_count(expected, timeout=timeout * 1000)
        self.page.get_by_text(f"| {ui('Idle')}").first.wait_for(timeout=timeout * 1000)  # the kernel is up
        self.count = expected
        return self

    # -- running

    def select_cell(self, index: int) -> None:
        """Click a cell's prompt (selecting it, in command mode). JupyterLab draws cells as they
        come into view, so the first click may land before the layout settles: click until the
        cell is the active one."""
        cell = self.cells.nth(index)
        for _ in range(10):
            cell.locator(".jp-InputPrompt").click()
            try:
                self.page.wait_for_function(
                    "c => c.classList.contains('jp-mod-active')", arg=cell.element_handle(), timeout=1000
                )
                return
            except Exception:  # noqa: BLE001 - retried, then reported below
                continue
        raise AssertionError(f"{self.name}: could not select cell {index}")

    def run_menu(self, item: str) -> None:
        """Run > ``item`` from JupyterLab's menu bar (both in the interface's language)."""
        ui = self.server.ui
        self.page.get_by_role("menuitem", name=ui("Run", "menu"), exact=True).click()
        label = self.page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{re.escape(ui(item))}$"))
        self.page.locator(".lm-Menu .lm-Menu-item", has=label).click()

    def run_all_but_last(self, timeout: float = RUN_TIMEOUT) -> None:
        """Run > Run All Above Selected Cell, with the last cell (the lessons' cleanup) selected,
        then wait for the run to end. The test interacts with what the cells left running."""
        self.select_cell(self.count - 1)
        self.run_menu("Run All Above Selected Cell")
        self.wait_run(range(self.count - 1), timeout)

    def run_last(self, timeout: float = RUN_TIMEOUT) -> None:
        """Run > Run Selected Cell on the last cell (the cleanup)."""
        self.select_cell(self.count - 1)
        self.run_menu("Run Selected Cell")
        self.wait_run([self.count - 1], timeout)

    def prompts(self) -> list[str | None]:
        return self.panel.evaluate(_PROMPTS_JS)

    def wait_run(self, cells: Any, timeout: float) -> None:
        """Until no cell is running or queued ("[*]") and the first code cell of ``cells`` ran;
        then every code cell of ``cells`` must have run (a failing cell stops the rest)."""
        cells = list(cells)
        deadline = time.monotonic() + timeout
        while True:
            prompts = self.prompts()
            code = [i for i in cells if prompts[i] is not None]
            if code and re.fullmatch(r"\[\d+\]:", prompts[code[0]]) and "[*]:" not in prompts:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: still running after {timeout:.0f}s: prompts {prompts}\n"
                                     f"{self.problems()}")  # fmt: skip
            self.page.wait_for_timeout(200)
        not_run = [i for i in code if not re.fullmatch(r"\[\d+\]:", prompts[i])]
        assert not not_run, f"{self.name}: cells {not_run} did not run:\n" + "\n".join(self.problems())

    # -- what the page shows

    def outputs(self) -> list[dict[str, Any]]:
        return self.panel.evaluate(_OUTPUTS_JS)

    def problems(self) -> list[str]:
        """What a learner would see go wrong: error outputs (tracebacks, stderr), widgets that
        did not draw, and table rows that wrap."""
        found = []
        for out in self.outputs():
            if out["hidden"]:
                continue
            where = f"{self.name} cell {out['cell']}"
            if out["mime"] in ("application/vnd.jupyter.stderr", "application/vnd.jupyter.error"):
                if any(p.fullmatch(out["text"].strip()) for p in self.expected_stderr):
                    continue
                found.append(f"{where} reports an error:\n{out['text'][-3000:]}")
            elif out["mime"] is None and not out["widget"]:
                found.append(f"{where}: a widget output without a widget view: {out['text'][:300]!r}")
            elif _WIDGET_FAILED.search(out["text"]):
                found.append(f"{where}: a widget did not draw: {out['text'][:300]!r}")
        for table in self.panel.locator(".jp-OutputArea-output table").all():
            table.scroll_into_view_if_needed()  # measured where it is drawn
            for row in table.evaluate(_WRAPPED_JS):
                found.append(f"{self.name}: a table row wraps: {row}")
        return found

    def assert_clean(self) -> None:
        problems = self.problems()
        assert not problems, "\n".join(problems)

    def cell_output(self, index: int) -> Any:
        return self.cells.nth(index).locator(".jp-OutputArea")


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, *, show: Callable[[], Any] | None = None
) -> Any:
    """Poll ``predicate`` (every 0.1 s) until it returns something true, and return that; after
    ``timeout`` fail with ``what`` and, if given, ``show()``: what the page shows then."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            now = f"; now: {show()!r}" if show is not None else ""
            raise AssertionError(f"{what}: not within {timeout:.0f}s{now}")
        time.sleep(0.1)
