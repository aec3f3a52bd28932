"""The course's and the workshop's exercises in Chinese (issue 15): under ``zh_CN`` every failure a
check can report — the placeholder, each typical mistake, a NACK, a check without a lab — reaches
the learner in Chinese, detail and hint, against a real Envoy; Envoy's own words stay as Envoy wrote
them, with a Chinese sentence on what the common ones mean.

A line of a check's text may hold English only where it also holds Chinese (names, code and
Envoy's words sit inside Chinese sentences): a line of English prose alone is an untranslated message.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from labxds import Snapshot, cluster, http_listener
from labxds.classroom import EXERCISES, Learner, Target, course_exercises, exercise, render
from labxds.classroom.course.lesson08 import lesson_clusters
from labxds.i18n import _, set_language
from labxds.notebook import styled
from labxds.notebook.course import answers_of, namespace, run_code
from labxds.xds.tracking import PushRejected

#: The lessons whose checks speak Chinese (1-5: helper zh-a, 6-9: zh-b, 10-13: zh-c and zh-d, 14: zh-e): all of them.
ZH_LESSONS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14)
#: Han characters: a message in Chinese has some.
HAN = re.compile(r"[\u4e00-\u9fff]")
ENGLISH_PROSE = re.compile(r"[A-Za-z]{3,} [A-Za-z]{3,} [A-Za-z]{3,}")


def _english_left(text: str) -> list[str]:
    return [line for line in text.splitlines() if ENGLISH_PROSE.search(line) and not HAN.search(line)]


def _assert_chinese(text: str, what: str) -> None:
    assert HAN.search(text), f"{what} is not in Chinese: {text!r}"
    left = _english_left(text)
    assert not left, f"{what} has English left: {left}"



@pytest.fixture(autouse=True)
def _chinese(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("LABXDS_LANG", "JPY_SESSION_NAME"):
        monkeypatch.delenv(name, raising=False)
    set_language("zh_CN")
    yield
    set_language(None)



def _assert_fails_in_chinese(result: Any, what: str) -> None:
    assert not result.passed, f"{what} passes: {result}"
    could_not = _("could not check: {error}").split("{")[0]
    assert not result.detail.startswith(could_not), f"{what}: the check did not foresee it: {result}"
    _assert_chinese(result.detail, f"{what}'s detail")
    _assert_chinese(result.hint, f"{what}'s hint")
    _assert_chinese(str(result), f"{what} as printed")


@pytest.mark.envoy
@pytest.mark.parametrize("lesson", ZH_LESSONS)
def test_every_failure_of_the_lessons_checks_is_chinese(lesson: int, labs: Any) -> None:
    for ex in course_exercises(lesson):
        _assert_chinese(_(ex.title), f"{ex.key}'s title")
        _assert_chinese(_(ex.task), f"{ex.key}'s task")
        lab = labs(dict(ex.lab_options))
        ns = namespace(lab)
        run_code(ex.given, ns, where=f"<{ex.key} given>")
        tries = [("its placeholder", ex.placeholder), *((f"mistake {i}", m) for i, m in enumerate(ex.mistakes))]
        for what, code in tries:
            trial = dict(ns)
            run_code(code, trial, where=f"<{ex.key} {what}>")
            _assert_fails_in_chinese(ex.check(lab, *answers_of(ex, trial)), f"{ex.key}'s {what}")
        run_code(ex.solution, ns, where=f"<{ex.key} solution>")
        result = ex.check(lab, *answers_of(ex, ns))
        assert result.passed, f"{ex.key}'s check fails on its solution: {result}"
        _assert_chinese(result.detail, f"{ex.key}'s ✓")


@pytest.mark.envoy
def test_a_nack_keeps_envoys_words_and_explains_them_in_chinese(labs: Any) -> None:
    """A route Envoy refuses (weights adding up to 0, in Envoy's JSON form: labxds's builders
    would refuse it first): the check quotes Envoy and says in Chinese what it means."""
    lab = labs({})
    zero = {"@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", "name": "local_route",
            "virtual_hosts": [{"name": "local_service", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
                    {"name": "service1", "weight": 0}, {"name": "service2", "weight": 0}]}}}]}]}
    result = exercise("8.1").check(lab, zero)
    _assert_fails_in_chinese(result, "8.1 with weights adding up to 0")
    assert "Sum of weights in the weighted_cluster must be greater than 0" in result.detail  # Envoy's words
    assert "权重之和为 0" in result.hint  # what they mean

    # The exception a push raises says it too, beside Envoy's words (lesson 6 prints it).
    with pytest.raises(PushRejected) as info:
        lab.push(Snapshot([*lesson_clusters(lab)[:2], zero, lesson_clusters(lab)[2]], version=lab.next_version()),
                 timeout=8)
    text = str(info.value)
    assert "拒绝了 RDS" in text and "Sum of weights" in text and "权重之和为 0" in text, text


@pytest.mark.envoy
def test_response_flags_in_a_table_are_explained_in_chinese(labs: Any) -> None:
    """503 NC: a route to a cluster Envoy does not have. The table keeps Envoy's flag and its
    caption says what the flag means."""
    lab = labs({})
    missing = {"@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", "name": "local_route",
               "virtual_hosts": [{"name": "local_service", "domains": ["*"],
                                  "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "nowhere"}}]}]}
    listener = http_listener("listener_0", lab.listener_port, "local_route", address=lab.mode.listen_host,
                             response_flags=True)
    lab.push(Snapshot([cluster("service1", lab.endpoints("service1"), type="STATIC"), missing, listener],
                      version=lab.next_version(), check=False))
    answers = lab.curl(2)
    assert list(answers["flags"]) == ["NC", "NC"] and list(answers["status"]) == [503, 503]
    html = styled(answers[["status", "flags"]], _("requests")).to_html()
    assert ">NC<" in html and "响应标志 NC" in html and "响应标志" in html  # the flag, its meaning, the header


@pytest.mark.envoy
def test_the_workshops_exercises_fail_and_pass_in_chinese(labs: Any) -> None:
    """route-api, canary, fix-nack checked on a learner's Envoy (here a lab's), from where the
    instructor starts them, with their typical mistake, and solved; the control plane's verdict too."""
    lab = labs({})
    me = Learner.from_lab(lab)
    for key, ex in EXERCISES.items():
        _assert_chinese(_(ex.title), f"{key}'s title")
        _assert_chinese(_(ex.task), f"{key}'s task")
        for what, spec in (("its start", ex.start), ("its typical mistake", ex.wrong)):
            try:
                lab.push(render(spec, me), timeout=8)
            except PushRejected:
                pass  # fix-nack starts from a listener Envoy refuses
            _assert_fails_in_chinese(ex.check(lab), f"{key} at {what}")
            confirmed, evidence = ex.confirm(lab.cp, me)
            assert confirmed is not True and HAN.search(evidence), (key, what, evidence)
        lab.push(render(ex.solved, me), timeout=8)
        result = ex.check(lab)
        assert result.passed, str(result)
        _assert_chinese(result.detail, f"{key}'s ✓")
        confirmed, evidence = ex.confirm(lab.cp, me)
        assert confirmed is True and HAN.search(evidence), (key, evidence)


def test_a_check_without_its_lab_and_an_unknown_key_say_so_in_chinese() -> None:
    result = exercise("6.1").check(Target("learner", "http://127.0.0.1:9", "http://127.0.0.1:9"), None)
    _assert_fails_in_chinese(result, "6.1 without a lab")
    with pytest.raises(KeyError) as info:
        exercise("6.9")
    _assert_chinese(str(info.value.args[0]), "an unknown exercise")
