"""Fixtures of the browser tests: Debian's Chromium driven by Playwright, JupyterLab as `make lab`
starts it, and a page whose console errors fail the test.

Without /usr/bin/chromium (or the Chromium LABXDS_CHROMIUM names) the tests skip, saying why and how to install it (the summary of
`make test` lists the reason). With LABXDS_BROWSER_TESTS=required (.ci/run sets it) they fail
instead: in CI a missing browser must not pass as a skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_lab import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    SKIP_REASON,
    VIEWPORT,
    ConsoleWatch,
    JupyterLabServer,
    Screenshots,
    han_fonts_env,
)


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not os.access(CHROMIUM, os.X_OK):
        if os.environ.get("LABXDS_BROWSER_TESTS") == "required":
            pytest.fail(SKIP_REASON.replace("did not run", "cannot run (LABXDS_BROWSER_TESTS=required)"))
        pytest.skip(SKIP_REASON)
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Chromium of its own (a fresh user-data-dir), headless, for the module's tests."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(chromium),
            env=han_fonts_env(tmp_path_factory.mktemp("fonts")),
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport=VIEWPORT,
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def jupyterlab_server(chromium: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterLabServer]:
    """JupyterLab as `make lab` starts it, on a copy of notebooks/ and free ports, for the module."""
    server = JupyterLabServer(tmp_path_factory.mktemp("jupyterlab")).start()
    try:
        yield server
    finally:
        server.stop()
    server.wait_no_leftovers()


@pytest.fixture(scope="module")
def jupyterlab_zh_server(chromium: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterLabServer]:
    """JupyterLab as `make lab-zh` starts it: the Chinese course (notebooks/zh-CN/) with the
    interface in Chinese and LABXDS_LANG=zh_CN, on a copy of notebooks/ and free ports."""
    server = JupyterLabServer(tmp_path_factory.mktemp("jupyterlab-zh"), target="lab-zh").start()
    try:
        yield server
    finally:
        server.stop()
    server.wait_no_leftovers()


@pytest.fixture
def jupyterlab_zh(jupyterlab_zh_server: JupyterLabServer) -> Iterator[JupyterLabServer]:
    """The module's Chinese JupyterLab; its kernels (their labs and Envoys) shut down after the test."""
    yield jupyterlab_zh_server
    jupyterlab_zh_server.shutdown_kernels()
    jupyterlab_zh_server.wait_no_leftovers()


@pytest.fixture
def jupyterlab(jupyterlab_server: JupyterLabServer) -> Iterator[JupyterLabServer]:
    """The module's JupyterLab; after the test, every kernel it started is shut down, and with
    them their labs and Envoys (the next notebook uses the same ports)."""
    yield jupyterlab_server
    jupyterlab_server.shutdown_kernels()
    jupyterlab_server.wait_no_leftovers()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    page = browser.new_page()
    page.set_default_timeout(30_000)
    try:
        yield page
    finally:
        page.close()


@pytest.fixture
def console(page: Any) -> Iterator[ConsoleWatch]:
    """The page's console errors: the test fails on any (checked again when it ends)."""
    watch = ConsoleWatch(page)
    yield watch
    watch.assert_clean()


@pytest.fixture
def shots(page: Any, request: pytest.FixtureRequest) -> Iterator[Screenshots]:
    """Numbered screenshots under test-output/browser/, and one more when the test ends."""
    taken = Screenshots(page, request.node.name.removeprefix("test_"))
    yield taken
    taken.take("end")
