"""What the course's tests share: labs on free ports, one per distinct ``lab_options``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from envoy_helpers import free_port

from labxds.notebook import Lab


@pytest.fixture(scope="module")
def labs() -> Iterator[Callable[[dict[str, Any]], Lab]]:
    """Labs on free ports, one per distinct ``lab_options``, started on first use (a lesson's
    exercises run in order on one lab, as a learner meets them)."""
    running: dict[str, Lab] = {}

    def get(options: dict[str, Any]) -> Lab:
        key = json.dumps(options, sort_keys=True)
        if key not in running:
            running[key] = Lab(xds_port=0, admin_port=0, listener_port=free_port(), **options).start(progress=False)
        return running[key]

    yield get
    for lab in running.values():
        lab.stop()
