"""The course's checks speak Chinese under zh_CN: on each exercise's placeholder and typical
mistakes (the learner's first meetings with a check), against a real Envoy, what the check says
and its hint are Chinese, with no English sentence left. Names, code and Envoy's own words stay
as they are (inside Chinese sentences). A solution's ✓ in Chinese is tested where the Chinese
notebooks run (test_notebooks.py).

ZH_LESSONS are the lessons whose checks are translated: the Chinese edition's helpers add theirs.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from labxds.classroom import course_exercises
from labxds.i18n import set_language
from labxds.notebook import Lab
from labxds.notebook.course import answers_of, namespace, run_code

ZH_LESSONS = [1, 2, 3, 4, 5]
HAN = re.compile(r"[\u4e00-\u9fff]")
#: Four English words in a row: a sentence left untranslated (Envoy's texts aside, see _english).
ENGLISH_RUN = re.compile(r"\b[A-Za-z]{2,}(?:[ ,]+[A-Za-z]{2,}){3,}\b")
#: Words that are the echo services' or Envoy's, quoted inside the Chinese text.
NOT_OURS = ("Request served by", "Proto constraint validation failed")


def _english(text: str) -> list[str]:
    """Untranslated runs of English in ``text``: text without any Chinese whose words read as a
    sentence (not code), or four English words in a row inside Chinese text."""
    for quoted in NOT_OURS:
        text = text.replace(quoted, "")
    if not HAN.search(text):
        code = re.search(r"[=()\[\]{}]|\w\.\w", text)
        return [] if code or not ENGLISH_RUN.search(text) else [text]
    return [run for run in ENGLISH_RUN.findall(text) if not re.search(r"_|\.", run)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def labs() -> Iterator[Any]:
    running: dict[str, Lab] = {}

    def get(options: dict[str, Any]) -> Lab:
        key = json.dumps(options, sort_keys=True)
        if key not in running:
            running[key] = Lab(xds_port=0, admin_port=0, listener_port=_free_port(), **options).start(progress=False)
        return running[key]

    yield get
    for lab in running.values():
        lab.stop()


@pytest.fixture
def chinese() -> Iterator[None]:
    set_language("zh_CN")
    yield
    set_language(None)


def test_the_detector_sees_english() -> None:
    assert _english("your snapshot is empty") and _english("你的快照 is still not pushed to Envoy")
    assert not _english("你的快照是空的") and not _english('pushed = lab.push(labxds.Snapshot([...], version="1"))')


@pytest.mark.envoy
@pytest.mark.parametrize("lesson", ZH_LESSONS)
def test_failed_checks_speak_chinese(lesson: int, labs: Any, chinese: None) -> None:
    exercises = course_exercises(lesson)
    assert exercises, f"lesson {lesson} has no exercises"
    for ex in exercises:
        lab = labs(dict(ex.lab_options))
        ns = namespace(lab)
        run_code(ex.given, ns, where=f"<{ex.key} given>")
        for what, code in [("placeholder", ex.placeholder), *((f"mistake {i}", m) for i, m in enumerate(ex.mistakes))]:
            tried = dict(ns)
            run_code(code, tried, where=f"<{ex.key} {what}>")
            result = ex.check(lab, *answers_of(ex, tried))
            assert not result.passed, f"{ex.key} passes on its {what}"
            said = f"{result.detail}\n{result.hint}"
            assert HAN.search(result.detail), f"{ex.key} on its {what}: no Chinese in {result.detail!r}"
            left = _english(result.detail) + _english(result.hint)
            assert not left, f"{ex.key} on its {what}: English left {left} in:\n{said}"
