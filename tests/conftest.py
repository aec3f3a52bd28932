"""Fixtures shared by the protocol tests."""

from __future__ import annotations

import os

import pytest

from labxds import ControlPlane


# The tests speak English unless one asks for Chinese (set_language, or LABXDS_LANG in a child's
# environment): a developer's own LABXDS_LANG, or JupyterLab's interface in Chinese (which labxds
# follows), must not turn the English tests' messages into Chinese.
os.environ["LABXDS_LANG"] = "en"


@pytest.fixture
def cp(request):
    """A running ControlPlane on a free port; options by indirect parametrization:
    ``parametrize("cp", [{...}], indirect=True)``."""
    plane = ControlPlane(port=0, **getattr(request, "param", {})).start()
    yield plane
    plane.stop()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Lines tests left for the end of the run (the compose topology's timings)."""
    lines = getattr(config, "labxds_summary", [])
    if lines:
        terminalreporter.write_sep("-", "labxds")
        for line in lines:
            terminalreporter.write_line(line)
