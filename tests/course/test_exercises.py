"""Every course exercise against a real Envoy: its check passes on its solution and fails, with a
hint and without a traceback, on its placeholder and on each typical mistake.

The exercises of a lesson run in order on one lab, as a learner meets them (a lab is shared by
every lesson that asks for the same ``lab_options``). Before each exercise its ``given`` code
runs: it brings the lab to where the exercise starts and defines what the solution uses from the
lesson's earlier cells.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from labxds.classroom import Exercise, course_exercises, exercise
from labxds.classroom.course import LESSON_MODULES, lesson_exercises
from labxds.notebook import Lab
from labxds.notebook.course import answers_of, namespace, run_code

LESSONS = sorted({e.lesson for e in course_exercises() if e.lesson is not None})
CHECK_BUDGET = 20.0  # seconds one check may take




def _timed_check(ex: Exercise, lab: Lab, answers: tuple[Any, ...]) -> Any:
    started = time.monotonic()
    result = ex.check(lab, *answers)
    took = time.monotonic() - started
    assert took < CHECK_BUDGET, f"{ex.key}'s check took {took:.1f}s"
    return result


def _assert_fails_well(ex: Exercise, result: Any, what: str) -> None:
    assert not result.passed, f"{ex.key}'s check passes on {what}: {result}"
    assert result.hint.strip(), f"{ex.key}'s check fails on {what} without a hint: {result}"
    assert not result.detail.startswith("could not check"), f"{ex.key}'s check did not foresee {what}: {result}"
    assert "Traceback" not in result.detail + result.hint


def test_every_lesson_module_registers_its_exercises() -> None:
    for module in LESSON_MODULES:
        found = lesson_exercises(module)
        assert found, f"{module} defines no exercises"
        for ex in found:
            assert exercise(ex.key) is ex


def test_course_exercises_are_complete() -> None:
    for ex in course_exercises():
        assert ex.title and ex.task, ex.key
        assert ex.placeholder.strip() and ex.solution.strip(), f"{ex.key} needs a placeholder and a solution"
        assert ex.answers, f"{ex.key} names no answers for its check"
        for name in ex.answers:
            assert ex.placeholder.lstrip().startswith(name), f"{ex.key}: the placeholder should assign {name}"
            assert name in ex.solution, f"{ex.key}: the solution never assigns {name}"
        assert "### " not in ex.solution, f"{ex.key}: the markers belong to the notebook, not the solution"
        assert all(d.startswith("https://www.envoyproxy.io/docs/envoy/v1.40.0/") for d in ex.docs), ex.docs
    for lesson in LESSONS:
        options = {json.dumps(dict(e.lab_options), sort_keys=True) for e in course_exercises(lesson)}
        assert len(options) == 1, f"lesson {lesson}'s exercises ask for different labs: {options}"


def test_an_unknown_key_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="2.1"):
        exercise("2.99")


@pytest.mark.envoy
@pytest.mark.parametrize("lesson", LESSONS)
def test_checks_pass_on_solutions_and_fail_on_placeholders(lesson: int, labs: Any) -> None:
    for ex in course_exercises(lesson):
        lab = labs(dict(ex.lab_options))
        ns = namespace(lab)
        run_code(ex.given, ns, where=f"<{ex.key} given>")

        run_code(ex.placeholder, ns, where=f"<{ex.key} placeholder>")
        _assert_fails_well(ex, _timed_check(ex, lab, answers_of(ex, ns)), "its placeholder")

        for i, mistake in enumerate(ex.mistakes):
            mistaken = dict(ns)
            run_code(mistake, mistaken, where=f"<{ex.key} mistake {i}>")
            _assert_fails_well(ex, _timed_check(ex, lab, answers_of(ex, mistaken)), f"mistake {i}:\n{mistake}")

        run_code(ex.solution, ns, where=f"<{ex.key} solution>")
        result = _timed_check(ex, lab, answers_of(ex, ns))
        assert result.passed, f"{ex.key}'s check fails on its solution: {result}"
        assert result.detail
