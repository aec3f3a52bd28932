"""What lessons 10-14's checks share: a change pushed while traffic runs, and what it cost.

A zero-downtime check is only honest if the traffic is real: :func:`under_traffic` starts
requests through the learner's listener, lets them run, pushes the learner's change in the
middle, lets them run on through Envoy's drain, and returns the traffic with every request
recorded. :func:`no_failures` turns failed requests into a :class:`Fail` that names them in the
learner's terms.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ...i18n import _
from ...lab.traffic import Traffic
from ..exercises import Fail, Target

__all__ = ["describe_failures", "mark_background", "no_failures", "under_traffic", "wait_until"]


def under_traffic(
    t: Target,
    change: Callable[[], Any],
    *,
    paths: Sequence[str] = ("/",),
    rate: float = 40.0,
    before: float = 0.6,
    after: float = 1.3,
    url: str | None = None,
    verify: Any = True,
    label: str = "a check's push",
) -> list[Traffic]:
    """Traffic to each of ``paths`` (``rate`` per second in all), ``change()`` in the middle.

    ``after`` outlasts the lab's Envoy drain time (1 s), so connections a listener change
    drains are seen to close. The change's own :class:`Fail` (a NACK, say) stops the traffic
    and goes to the learner as it is. The lab's own background traffic (``lab.traffic()``), if it
    runs, gets a mark ``label`` where the push happens, so the lesson's chart shows it."""
    base = url or t.listener_url
    runs = [Traffic(base, rate=rate / len(paths), path=p, verify=verify, workers=2) for p in paths]
    for run in runs:
        run.start()
    try:
        time.sleep(before)
        for run in runs:
            run.mark("your push")
        mark_background(t, label)
        change()
        time.sleep(after)
    finally:
        for run in runs:
            run.stop()
    return runs


def mark_background(t: Target, label: str) -> None:
    """Mark the lab's own background traffic (``lab.traffic()``), if it runs: the lesson's chart
    then shows where a check changed the configuration."""
    background = getattr(t.lab, "_traffic", None)
    if background is not None and background.running:
        background.mark(label)


def describe_failures(failures: dict[str, int]) -> str:
    """"3 connection refused, 1 503 no healthy upstream"."""
    return ", ".join(f"{n} {reason}" for reason, n in sorted(failures.items(), key=lambda kv: -kv[1]))


def no_failures(runs: Iterable[Traffic], hint: Callable[[dict[str, int]], str]) -> int:
    """The number of requests sent, when none failed; otherwise a Fail naming the failures,
    with ``hint(failures)`` saying what in the learner's change causes them."""
    total, failures = 0, dict[str, int]()
    for run in runs:
        summary = run.summary()
        total += summary["requests"]
        for reason, n in summary["failures"].items():
            failures[reason] = failures.get(reason, 0) + n
    if not total:
        raise Fail(_("no request got through at all during the check"), _("is listener_0 there? lab.listeners()"))
    if failures:
        failed = sum(failures.values())
        raise Fail(_("{failed} of {total} requests failed while your change was applied: {why}").format(
            failed=failed, total=total, why=describe_failures(failures)), hint(failures))
    return total


def wait_until(condition: Callable[[], Any], timeout: float, *, every: float = 0.05) -> Any:
    """``condition()``'s first true value within ``timeout`` seconds, else None (a check then
    fails with a hint; waiting is not an error)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value or None
        time.sleep(every)
