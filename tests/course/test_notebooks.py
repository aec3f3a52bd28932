"""The notebooks: each runs top to bottom in a fresh kernel, and is saved clean.

Each notebook's check cells assert what its text promises, so a broken lesson fails here. Each
run gets free ports through LABXDS_XDS_PORT / LABXDS_ADMIN_PORT / LABXDS_LISTENER_PORT (the
lessons use ``Lab()`` with the sandbox's defaults otherwise), passed to the kernel's environment
only: this process's own environment is left alone.

Saved notebooks are stripped: no outputs, no execution counts, no widget state. The course's
lessons (``NN_*.ipynb``) end with a cleanup cell and can have every cell run again; they run with
``LABXDS_STRICT_CHECKS=1``, so an exercise whose check fails on its solution fails here. What a
lesson must contain is tested in test_lessons.py.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))  # every notebook: saved stripped, runs
LESSONS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))  # the course: goal, checks, re-runnable
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


def _free_ports(n: int) -> list[int]:
    """n distinct ports nobody listens on now (bound together, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _load(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def test_the_course_is_complete() -> None:
    names = [p.name for p in LESSONS]
    assert len(names) >= 8 and names == EXPECTED[: len(names)], names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
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


def _kernel_env() -> dict[str, str]:
    """This process's environment plus free ports for the lab; the kernel runs with it."""
    xds, admin, listener = _free_ports(3)
    env = dict(os.environ)
    env.update({
        "LABXDS_XDS_PORT": str(xds),
        "LABXDS_ADMIN_PORT": str(admin),
        "LABXDS_LISTENER_PORT": str(listener),
        "LABXDS_MODE": "local",
        "LABXDS_STRICT_CHECKS": "1",  # an exercise's check that fails on its solution fails the run
        "PATH": os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
    })  # fmt: skip
    return env


def _execute(nb: nbformat.NotebookNode, path: Path) -> float:
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
        client.execute(env=_kernel_env())
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
