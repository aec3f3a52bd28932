"""The notebooks: each runs top to bottom in a fresh kernel, and is saved clean.

Each notebook's check cells assert what its text promises, so a broken lesson fails here. Each
run gets free ports through LABXDS_XDS_PORT / LABXDS_ADMIN_PORT / LABXDS_LISTENER_PORT (the
lessons use ``Lab()`` with the sandbox's defaults otherwise), passed to the kernel's environment
only: this process's own environment is left alone.

Saved notebooks are stripped: no outputs, no execution counts, no widget state. The course's
lessons (``NN_*.ipynb``) end with a cleanup cell and can have every cell run again; they run with
``LABXDS_STRICT_CHECKS=1``, so an exercise whose check fails on its solution fails here. What a
lesson must contain is tested in test_lessons.py.

The Chinese edition (notebooks/zh-CN/, the same code cells: test_zh_twins.py) runs top to bottom
too, with ``LABXDS_LANG=zh_CN`` and the same strict checks, and what the package shows there
(check results and hints, captions, progress) must be Chinese. Its cells are the English ones, so
re-running each cell is tested once, on the English notebooks.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import nbformat
import pytest
from envoy_helpers import free_ports

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))  # every notebook: saved stripped, runs
LESSONS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))  # the course: goal, checks, re-runnable
ZH_NOTEBOOKS = sorted((REPO / "notebooks" / "zh-CN").glob("*.ipynb"))  # the Chinese edition (issue 15)
#: Han characters: a message in Chinese has some.
HAN = re.compile(r"[\u4e00-\u9fff]")
CELL_TIMEOUT = 60  # seconds per cell
NOTEBOOK_BUDGET = 120  # seconds for a whole notebook

#: The course (issue 14), in order; the notebooks present are its first lessons.
EXPECTED = [
    "01_setting_up.ipynb",
    "02_first_snapshot.ipynb",
    "03_changing_config.ipynb",
    "04_upstream_toggle.ipynb",
    "05_load_balancing.ipynb",
    "06_protocol.ipynb",
    "07_sotw_vs_delta.ipynb",
    "08_traffic_shifting.ipynb",
    "09_ordering_and_warming.ipynb",
    "10_zero_downtime.ipynb",
    "11_resilience.ipynb",
    "12_proxyless_grpc.ipynb",
    "13_secrets_sds.ipynb",
    "14_delta_and_ttl.ipynb",
]
LESSON_BUDGET = 30  # seconds for a lesson, run top to bottom (issue 14)


def _load(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _ids(paths: list[Path], prefix: str = "") -> list[str]:
    return [prefix + p.stem for p in paths]


def test_the_course_is_complete() -> None:
    names = [p.name for p in LESSONS]
    assert len(names) >= 8 and names == EXPECTED[: len(names)], names


@pytest.mark.parametrize("path", NOTEBOOKS + ZH_NOTEBOOKS, ids=_ids(NOTEBOOKS) + _ids(ZH_NOTEBOOKS, "zh-CN/"))
def test_saved_stripped(path: Path) -> None:
    nb = _load(path)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has saved outputs: save it stripped"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
        assert "attachments" not in cell or not cell.attachments, f"{path.name} cell {i} has attachments"
    assert "widgets" not in nb.metadata, f"{path.name} saved widget state: save it stripped"


@pytest.mark.parametrize("path", LESSONS, ids=_ids(LESSONS))
def test_cleans_up_and_uses_the_labs_ports(path: Path) -> None:
    nb = _load(path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    last = code[-1].source
    assert ".stop()" in last, f"{path.name} must end with a cleanup cell calling .stop(), not:\n{last}"
    assert "Lab(" in "".join(c.source for c in code)
    # The lessons use the sandbox's ports (the env vars override them in CI), never fixed ones.
    for cell in code:
        for port in ("18000", "19000", "10000"):
            assert port not in cell.source, f"{path.name} hard-codes port {port}:\n{cell.source}"


def _kernel_env(**extra: str) -> dict[str, str]:
    """This process's environment plus free ports for the lab (and ``extra``); the kernel runs with it."""
    xds, admin, listener = free_ports(3)
    env = {k: v for k, v in os.environ.items() if k != "LABXDS_LANG"}
    env.update({
        "LABXDS_XDS_PORT": str(xds),
        "LABXDS_ADMIN_PORT": str(admin),
        "LABXDS_LISTENER_PORT": str(listener),
        "LABXDS_MODE": "local",
        "LABXDS_STRICT_CHECKS": "1",  # an exercise's check that fails on its solution fails the run
        "PATH": os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
        "LABXDS_LANG": "en",  # the English notebooks in English, whatever JupyterLab's language here
        **extra,
    })  # fmt: skip
    return env


def _execute(nb: nbformat.NotebookNode, path: Path, **env: str) -> float:
    """Run ``nb`` in a fresh kernel; fail with the failing cell's traceback; return the seconds."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    started = time.monotonic()
    try:
        client.execute(env=_kernel_env(**env))
    except CellExecutionError as exc:
        pytest.fail(f"{path.name} failed:\n{exc}", pytrace=False)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
    assert not errors, errors
    return time.monotonic() - started


def _cells_seconds(nb: nbformat.NotebookNode) -> float:
    """How long the cells ran (what a learner waits for), from nbclient's timing of each cell:
    the kernel's start, which a machine under load can stretch, is left out."""
    from datetime import datetime

    total = 0.0
    for cell in nb.cells:
        timing = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in timing and "shell.execute_reply" in timing:
            began = datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
            ended = datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
            total += (ended - began).total_seconds()
    return total


@pytest.mark.envoy
@pytest.mark.notebooks
@pytest.mark.timeout(NOTEBOOK_BUDGET + 60)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_runs_top_to_bottom(path: Path) -> None:
    nb = _load(path)
    took = _execute(nb, path)
    cells = _cells_seconds(nb)
    budget = LESSON_BUDGET if path in LESSONS else NOTEBOOK_BUDGET
    assert cells < budget, f"{path.name}'s cells ran {cells:.0f}s (budget {budget}s)"
    print(f"{path.name}: cells {cells:.1f}s, with the kernel's start {took:.1f}s")


@pytest.mark.envoy
@pytest.mark.notebooks
@pytest.mark.timeout(2 * NOTEBOOK_BUDGET + 60)
@pytest.mark.parametrize("path", LESSONS, ids=_ids(LESSONS))
def test_every_cell_reruns(path: Path) -> None:
    """Each cell run twice in a row, then the whole lesson again, in one kernel: all checks hold."""
    nb = _load(path)
    cleanup = nb.cells[-1]
    assert cleanup.cell_type == "code"
    body = [c for c in nb.cells[:-1] if c.cell_type == "code"]
    cells = [copy for c in body for copy in (c, c)] + body + [cleanup]
    nb.cells = [nbformat.v4.new_code_cell(c.source) for c in cells]
    _execute(nb, path)


def _text(output: nbformat.NotebookNode) -> str:
    """What an output says: its stream text, or its plain-text form, else its HTML."""
    if output.get("output_type") == "stream":
        return str(output.get("text", ""))
    data = output.get("data", {})
    return str(data.get("text/plain") or data.get("text/html") or "")


def _english_left(text: str) -> list[str]:
    """Lines of a check's output written in English: letters, no Chinese (Envoy's own words,
    names and code are inside lines that also hold Chinese)."""
    return [line for line in text.splitlines()
            if re.search(r"[A-Za-z]{3,} [A-Za-z]{3,} [A-Za-z]{3,}", line) and not HAN.search(line)]


@pytest.mark.envoy
@pytest.mark.notebooks
@pytest.mark.timeout(NOTEBOOK_BUDGET + 60)
@pytest.mark.parametrize("path", ZH_NOTEBOOKS, ids=_ids(ZH_NOTEBOOKS, "zh-CN/"))
def test_chinese_runs_top_to_bottom(path: Path) -> None:
    """The Chinese twin, as a learner of the Chinese edition runs it: LABXDS_LANG=zh_CN, every
    check strict; each check says ✓ in Chinese, and no caption, check line or printed ✓ is left in English."""
    nb = _load(path)
    took = _execute(nb, path, LABXDS_LANG="zh_CN")
    cells = _cells_seconds(nb)
    budget = LESSON_BUDGET if path.name[:2].isdigit() else NOTEBOOK_BUDGET
    assert cells < budget, f"zh-CN/{path.name}'s cells ran {cells:.0f}s (budget {budget}s)"
    checks = 0
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        said = "\n".join(_text(o) for o in cell.outputs)
        if re.match(r"check\(", cell.source.strip()):
            checks += 1
            assert "✓" in said and HAN.search(said), f"zh-CN/{path.name} cell {i}: the check did not say ✓ in Chinese:\n{said}"
            left = _english_left(said)
            assert not left, f"zh-CN/{path.name} cell {i}: English left in a check's output: {left}"
        assert "missing from font" not in said, f"zh-CN/{path.name} cell {i}: Chinese drawn without a Han font:\n{said}"
        english_ticks = [line for line in said.splitlines() if line.startswith("✓") and not HAN.search(line)]
        assert not english_ticks, f"zh-CN/{path.name} cell {i}: a ✓ printed in English (tr() it): {english_ticks}"
        for caption in re.findall(r"<caption>(.*?)</caption>", said, flags=re.S):
            assert HAN.search(caption), f"zh-CN/{path.name} cell {i}: a caption in English: {caption!r}"
    if path.name[:2].isdigit():
        assert checks >= 2, f"zh-CN/{path.name} ran {checks} checks"
    print(f"zh-CN/{path.name}: cells {cells:.1f}s, with the kernel's start {took:.1f}s")
