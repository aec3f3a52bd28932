"""The exercise API without an Envoy: results, failures and the registry."""

from __future__ import annotations

from typing import Any

import pytest

import labxds.classroom.exercises as exercises_module
from labxds.classroom import EXERCISES, Exercise, Fail, Target, course_exercises, exercise, register


def _ex(check_fn: Any, key: str = "99.1") -> Exercise:
    return Exercise(key, "a test", "nothing", check_fn, placeholder="answer = None", solution="answer = 1",
                    answers=("answer",))


def test_a_fail_is_a_failed_result_with_its_hint() -> None:
    def check(t: Target, answer: Any) -> str:
        if answer is None:
            raise Fail("answer is still None", "write it")
        return f"{t.learner} answered {answer}"

    ex = _ex(check)
    failed = ex.check(("http://127.0.0.1:1", "http://127.0.0.1:2"), None, learner="ann")
    assert (failed.passed, failed.detail, failed.hint, failed.learner) == (False, "answer is still None", "write it", "ann")
    passed = ex.check(("http://127.0.0.1:1", "http://127.0.0.1:2"), 3, learner="ann")
    assert passed.passed and passed.detail == "ann answered 3" and bool(passed)


def test_an_unforeseen_error_is_a_failed_result_not_a_traceback() -> None:
    ex = _ex(lambda t, answer: answer["missing"])
    result = ex.check(("http://127.0.0.1:1", "http://127.0.0.1:2"), {})
    assert not result.passed and result.detail.startswith("could not check: KeyError") and result.hint
    nowhere = ex.check(object(), 1)
    assert not nowhere.passed and "cannot check" in nowhere.detail


def test_a_course_check_needs_the_learners_own_lab() -> None:
    ex = _ex(lambda t, answer: t.own_lab())
    result = ex.check(("http://127.0.0.1:1", "http://127.0.0.1:2"), 1)
    assert not result.passed and "labxds.Lab().start()" in result.hint


def test_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    course_exercises(1)  # the course registers itself on first use
    monkeypatch.setattr(exercises_module, "_REGISTRY", dict(exercises_module._REGISTRY))
    assert exercise("route-api") is EXERCISES["route-api"]
    assert exercise("route-api").lesson is None and exercise("2.1").lesson == 2
    keys = [e.key for e in course_exercises()]
    assert keys == sorted(keys, key=lambda k: tuple(int(p) for p in k.split(".")))
    assert all(e.lesson is not None for e in course_exercises())
    extra = _ex(lambda t, answer: "ok", key="98.1")
    register(extra)
    assert exercise("98.1") is extra and extra in course_exercises(98)
    with pytest.raises(KeyError, match="no exercise '98.7'; there are: 98.1"):
        exercise("98.7")
