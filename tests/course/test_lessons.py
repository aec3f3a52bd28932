"""What every lesson of the course has, read from its notebook (no kernel needed).

Objectives, prerequisites and time first; a recap and a link to the next lesson last; links to
Envoy's docs; at least two exercises, each a cell with nbgrader's solution markers and metadata
whose placeholder and solution are those of a registered exercise, followed by a check cell
that passes the exercise's answers; the lab's topology and a sequence diagram of its own trace;
and a student version (nbgrader's ClearSolutions) that keeps each placeholder.

The Chinese edition's lessons (notebooks/zh-CN/, issue 15) pass the same tests with their
headings in Chinese (WORDS); their code cells are the English ones (test_zh_twins.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from labxds.classroom import course_exercises, exercise

REPO = Path(__file__).resolve().parents[2]
LESSON_PATHS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
ZH_LESSON_PATHS = sorted((REPO / "notebooks" / "zh-CN").glob("[0-9][0-9]_*.ipynb"))
#: Lessons of the first edition that the course's other helpers are rewriting (issue 14): these
#: tests skip them until then, and test_pending_lessons_are_still_first_edition says when to
#: take one off this list.
PENDING: set[str] = set()
LESSONS = [
    pytest.param(p, id=p.stem, marks=pytest.mark.skip(reason="first edition, being rewritten (issue 14)"))
    if p.stem in PENDING else pytest.param(p, id=p.stem)
    for p in LESSON_PATHS
] + [pytest.param(p, id=f"zh-CN/{p.stem}") for p in ZH_LESSON_PATHS]
#: What a lesson's markdown says, per edition: its headings and the Under the hood note's mark.
WORDS = {
    "en": {
        "objectives": "**Objectives:**", "prerequisites": "**Prerequisites:**", "time": "**Time:**",
        "minutes": r"\*\*Time:\*\* about (\d+) minutes", "recap": "## Recap", "under_the_hood": "**Under the hood.**",
        "implementation": ("event loop", "asyncio", "grpc.aio"),
    },
    "zh-CN": {
        "objectives": "**学习目标：**", "prerequisites": "**前置知识：**", "time": "**时长：**",
        "minutes": r"\*\*时长：\*\*\s*约\s*(\d+)\s*分钟", "recap": "## 小结", "under_the_hood": "**实现细节。**",
        "implementation": ("event loop", "asyncio", "grpc.aio", "事件循环"),
    },
}  # fmt: skip


def _edition(path: Path) -> str:
    return "zh-CN" if path.parent.name == "zh-CN" else "en"


def _words(path: Path) -> dict:
    return WORDS[_edition(path)]
DOCS = "https://www.envoyproxy.io/docs/envoy/v1.40.0/"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
CHECK = re.compile(r'^check\("(?P<key>\d+\.\d+)", lab(?P<args>(?:, \w+)*)\)\s*$')


def _load(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _exercise_cells(nb: nbformat.NotebookNode) -> list[tuple[int, nbformat.NotebookNode]]:
    return [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code" and BEGIN in c.source]


def _number(path: Path) -> int:
    return int(path.name[:2])


def test_lessons_are_numbered_in_order() -> None:
    assert [_number(p) for p in LESSON_PATHS] == list(range(1, len(LESSON_PATHS) + 1)), [p.name for p in LESSON_PATHS]


def test_pending_lessons_are_still_first_edition() -> None:
    for path in LESSON_PATHS:
        if path.stem in PENDING:
            first = _load(path).cells[0].source
            assert "**Objectives:**" not in first, f"{path.name} is rewritten: take it off PENDING in {__file__}"


@pytest.mark.parametrize("path", LESSONS)
def test_opens_with_objectives_prerequisites_and_time(path: Path) -> None:
    first = _load(path).cells[0]
    words = _words(path)
    assert first.cell_type == "markdown" and first.source.startswith(f"# {_number(path)} · ")
    for part in (words["objectives"], words["prerequisites"], words["time"]):
        assert part in first.source, f"{path.name}'s first cell needs {part}"
    stated = re.search(words["minutes"], first.source)
    assert stated, "say the time in minutes"
    if _edition(path) != "en":  # the same time as the English lesson
        english = re.search(WORDS["en"]["minutes"], _load(REPO / "notebooks" / path.name).cells[0].source)
        assert english and english[1] == stated[1], f"zh-CN/{path.name} says {stated[1]} minutes, the English lesson {english}"


@pytest.mark.parametrize("path", LESSONS)
def test_ends_with_a_recap_and_the_next_lesson(path: Path) -> None:
    text = "\n".join(c.source for c in _load(path).cells if c.cell_type == "markdown")
    recap_heading = _words(path)["recap"]
    assert recap_heading in text, f"{path.name} needs a '{recap_heading}'"
    recap = text[text.index(recap_heading):]
    following = [p for p in LESSON_PATHS if _number(p) == _number(path) + 1]
    if following:
        target = following[0].name
        if _edition(path) != "en" and not (path.parent / target).exists():
            target = f"../{target}"  # no Chinese twin yet: the English lesson
        assert f"]({target})" in recap, f"{path.name}'s recap must link to {target}"
    assert DOCS in text, f"{path.name} must link to Envoy's docs ({DOCS}...)"
    assert not re.search(r"envoyproxy\.io/docs/envoy/(latest|v1\.(?!40\.0)\d+)", text), "link to v1.40.0's docs"


@pytest.mark.parametrize("path", LESSONS)
def test_has_exercises_with_markers_and_checks(path: Path) -> None:
    nb = _load(path)
    cells = _exercise_cells(nb)
    assert len(cells) >= 2, f"{path.name} needs at least two exercises"
    seen = []
    for i, cell in cells:
        assert cell.source.count(BEGIN) == 1 and cell.source.count(END) == 1
        placeholder, rest = cell.source.split(BEGIN + "\n")
        solution, after = rest.split("\n" + END)
        assert placeholder.strip(), f"{path.name} cell {i}: the line before {BEGIN} is the placeholder"
        assert not after.strip(), f"{path.name} cell {i}: nothing after {END}"
        meta = cell.metadata.get("nbgrader", {})
        assert meta.get("solution") is True and meta.get("grade") is False and meta.get("grade_id"), meta
        following = nb.cells[i + 1]
        match = CHECK.match(following.source.strip()) if following.cell_type == "code" else None
        assert match, f"{path.name} cell {i + 1} must check the exercise: check(\"N.M\", lab, answer)"
        ex = exercise(match["key"])
        assert ex.lesson == _number(path), f"{path.name} checks {ex.key}, another lesson's exercise"
        assert placeholder.rstrip("\n") == ex.placeholder, f"{ex.key}: the notebook's placeholder differs"
        assert solution == ex.solution, f"{ex.key}: the notebook's solution differs from the registered one"
        args = [a.strip() for a in match["args"].split(",") if a.strip()]
        assert tuple(args) == ex.answers, f"{ex.key}: check with {ex.answers}, not {args}"
        seen.append(ex.key)
    assert len(set(seen)) == len(seen), f"{path.name} checks an exercise twice: {seen}"
    assert sorted(seen) == sorted(e.key for e in course_exercises(_number(path))), "every exercise, once"
    grade_ids = [c.metadata["nbgrader"]["grade_id"] for _, c in cells]
    assert len(set(grade_ids)) == len(grade_ids), "nbgrader needs a grade_id per exercise cell"
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            assert "BEGIN SOLUTION" not in cell.source, "nbgrader would clear markdown that names its marker"


@pytest.mark.parametrize("path", LESSONS)
def test_draws_its_topology_and_its_conversation(path: Path) -> None:
    code = "\n".join(c.source for c in _load(path).cells if c.cell_type == "code")
    assert re.search(r"\btopology\(", code), f"{path.name} must draw the lab's topology (lab.topology())"
    assert re.search(r"\bsequence\(", code), f"{path.name} must draw its xDS conversation (lab.sequence(...))"


@pytest.mark.parametrize("path", LESSONS)
def test_implementation_details_are_marked(path: Path) -> None:
    """Words about our event loops and threads belong in an 'Under the hood' note."""
    words = _words(path)
    for cell in _load(path).cells:
        if cell.cell_type != "markdown" or words["under_the_hood"] in cell.source:
            continue
        for word in words["implementation"]:
            assert word not in cell.source, f"{path.name}: '{word}' outside an Under the hood note:\n{cell.source}"


@pytest.mark.parametrize("path", LESSONS)
def test_the_student_version_keeps_the_placeholders(path: Path) -> None:
    from labxds.notebook.student import CODE_STUB, student_version

    nb = _load(path)
    assert _exercise_cells(nb), f"{path.name} has no exercise cells"
    student = student_version(nb)
    nbformat.validate(student)
    assert len(student.cells) == len(nb.cells)
    for i, cell in _exercise_cells(nb):
        placeholder = cell.source.split(BEGIN)[0]
        solution = cell.source.split(BEGIN + "\n")[1].split("\n" + END)[0]
        cleared = student.cells[i].source
        assert cleared == placeholder + CODE_STUB, f"{path.name} cell {i}:\n{cleared}"
        for line in solution.splitlines():
            if line.strip() and line.strip() not in placeholder:
                assert line not in cleared
    unchanged = [j for j, c in enumerate(nb.cells) if j not in dict(_exercise_cells(nb))]
    assert all(student.cells[j].source == nb.cells[j].source for j in unchanged)


def test_the_readme_maps_the_course() -> None:
    """README's course map lists every lesson with the time its notebook states, and the total."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| \[\d+ · [^\]]+\]\(notebooks/(\d\d_\w+\.ipynb)\) \| (\d+) min \|", readme, flags=re.M))
    assert sorted(rows) == [p.name for p in LESSON_PATHS], "README's course map must list every lesson, in order"
    for path in LESSON_PATHS:
        stated = re.search(r"\*\*Time:\*\* about (\d+) minutes", _load(path).cells[0].source)
        if stated:
            assert rows[path.name] == stated[1], f"README says {rows[path.name]} min for {path.name}, it says {stated[1]}"
    total = sum(int(m) for m in rows.values())
    hours, minutes = divmod(total, 60)
    said = f"about **{hours} hours {minutes} minutes** in all" if minutes else f"about **{hours} hours** in all"
    assert said in readme, f"README should say the course takes {said}"


def test_the_chinese_readme_maps_the_course() -> None:
    """README.zh-CN.md's course map (课程地图) lists every lesson, linking its Chinese twin (the
    English lesson while the twin is pending), with the time and the total of the English map."""
    readme = (REPO / "README.zh-CN.md").read_text(encoding="utf-8")
    found = re.findall(r"^\| \[(\d+) · [^\]]+\]\(notebooks/((?:zh-CN/)?)(\d\d_\w+\.ipynb)\)[^|]* \| (\d+) 分钟 \|",
                       readme, flags=re.M)
    assert [name for _n, _zh, name, _m in found] == [p.name for p in LESSON_PATHS], "list every lesson, in order"
    for number, zh, name, minutes in found:
        assert int(number) == int(name[:2])
        twin = (REPO / "notebooks" / "zh-CN" / name).exists()
        assert bool(zh) == twin, f"{name}: link {'notebooks/zh-CN/' if twin else 'notebooks/'}{name}"
        stated = re.search(WORDS["en"]["minutes"], _load(REPO / "notebooks" / name).cells[0].source)
        if stated:
            assert minutes == stated[1], f"README.zh-CN.md says {minutes} 分钟 for {name}, the lesson {stated[1]}"
    total = sum(int(m) for *_rest, m in found)
    hours, minutes = divmod(total, 60)
    said = f"共约 **{hours} 小时 {minutes} 分钟**" if minutes else f"共约 **{hours} 小时**"
    assert said in readme, f"README.zh-CN.md should say the course takes {said}"
    assert "](README.zh-CN.md)" in (REPO / "README.md").read_text(encoding="utf-8")[:300], \
        "README.md links the Chinese README at its top"


def test_the_workshop_learner_uses_the_shared_exercises() -> None:
    """The workshop's exercise cells are the registered exercises' code, checked with check(key, me),
    and nbgrader's student version keeps their placeholders."""
    from labxds.classroom import EXERCISES
    from labxds.notebook.student import CODE_STUB, student_version

    nb = _load(REPO / "notebooks" / "workshop_learner.ipynb")
    cells = _exercise_cells(nb)
    keys = []
    for i, cell in cells:
        match = re.fullmatch(r'check\("([\w-]+)", me\)', nb.cells[i + 1].source.strip())
        assert match, f"cell {i + 1} must be check(key, me)"
        ex = EXERCISES[match[1]]
        assert cell.source == f"{ex.placeholder}\n{BEGIN}\n{ex.solution}\n{END}"
        assert cell.metadata["nbgrader"]["solution"] is True
        keys.append(ex.key)
    assert sorted(keys) == sorted(EXERCISES)
    student = student_version(nb)
    for i, cell in cells:
        assert student.cells[i].source == cell.source.split(BEGIN)[0] + CODE_STUB
