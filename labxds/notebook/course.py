"""The course's exercises in a notebook: ``check`` an answer, ``solve`` an exercise, list ``exercises``.

An exercise cell holds the placeholder line, then the solution between nbgrader's markers::

    route_yaml = None  # local_route as YAML text
    ### BEGIN SOLUTION
    route_yaml = \"\"\"...\"\"\"
    ### END SOLUTION

and the cell after it checks the answer against the learner's real Envoy::

    check("2.1", lab, route_yaml)

``check`` shows ✓ with what it saw, or ✗ with what is wrong and a hint (never a traceback), and
returns the :class:`~labxds.classroom.CheckResult`. ``solve("2.1", lab)`` shows the solution, runs
it in the notebook (so its names exist afterwards), checks it and returns the answer.

With ``LABXDS_STRICT_CHECKS=1`` in the environment (how CI runs the notebooks with their
solutions) a failed check raises :class:`ExerciseFailed` after showing itself.
"""

from __future__ import annotations

import html
import importlib
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..classroom.exercises import CheckResult, Exercise, course_exercises
from ..classroom.exercises import exercise as find_exercise
from ..i18n import N_, _

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Checked", "ExerciseFailed", "check", "exercises", "namespace", "run_code", "solve"]

STRICT_ENV = "LABXDS_STRICT_CHECKS"


class ExerciseFailed(AssertionError):
    """A check failed while ``LABXDS_STRICT_CHECKS`` is set (a notebook run with its solutions)."""


@dataclass(frozen=True)
class Checked(CheckResult):
    """A check's result as a notebook shows it: ✓ or ✗, what the check saw, a hint."""

    title: str = ""
    #: The IPython execution count of the cell that displayed it: that cell's output shows it once.
    shown_in: int | None = None

    @property
    def symbol(self) -> str:
        """✓ passed, ✗ failed; in a workshop ⚠ for a pass the control plane contradicts."""
        if not self.passed:
            return "✗"
        return "⚠" if self.confirmed is False else "✓"

    def _verdict(self) -> str:
        """What the workshop's control plane says of a reported result (empty outside a workshop)."""
        if not self.evidence:
            return ""
        said = {True: N_("control plane confirms: {evidence}"), False: N_("control plane contradicts: {evidence}"),
                None: N_("control plane cannot tell: {evidence}")}[self.confirmed]
        return _(said).format(evidence=self.evidence)

    def _repr_html_(self) -> str:
        color = {"✓": "#1a7f37", "✗": "#cf222e", "⚠": "#9a6700"}[self.symbol]
        title = f" {html.escape(self.title)}" if self.title else ""
        body = html.escape(self.detail)
        if self.hint and not self.passed:
            label = _("Hint:")
            body += f"<br><b>{html.escape(label)}</b> {html.escape(self.hint)}"
        if self._verdict():
            body += f"<br><i>{html.escape(self._verdict())}</i>"
        return (f'<div style="border-left:4px solid {color};padding:2px 8px;margin:4px 0">'
                f'<b style="color:{color}">{self.symbol} {html.escape(self.exercise)}{title}</b><br>{body}</div>')  # fmt: skip

    def __repr__(self) -> str:
        text = f"{self.symbol} {self.exercise} {self.title}".rstrip()
        if self.detail:
            text = _("{head}: {detail}").format(head=text, detail=self.detail)
        if self.hint and not self.passed:
            label = _("Hint:")
            text += f"\n  {label} {self.hint}"
        if self._verdict():
            text += f"\n  ({self._verdict()})"
        return text

    __str__ = __repr__

    def _ipython_display_(self) -> None:
        # check() has displayed this result in the cell that called it; as that cell's value it
        # would show twice. Anywhere else (a later cell's `result`) it shows as usual.
        ip = _ipython()
        if ip is not None and self.shown_in is not None and ip.execution_count == self.shown_in:
            return
        _display(self)


def _ipython() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with the notebook extra
        return None
    return get_ipython()


def _show(*objs: Any, **kwargs: Any) -> None:
    """IPython's display (looked up at run time: the notebook layer's only use of it)."""
    importlib.import_module("IPython.display").display(*objs, **kwargs)


def _display(result: Checked) -> None:
    _show({"text/plain": repr(result), "text/html": result._repr_html_()}, raw=True)


def _strict() -> bool:
    return os.environ.get(STRICT_ENV, "").strip().lower() not in ("", "0", "false", "no")


def check(key: str, lab: Any, *answers: Any) -> Checked:
    """Check exercise ``key`` against your lab's real Envoy with your ``answers``; shows ✓ or a hint.

    ``lab`` may also be a workshop's :class:`~labxds.classroom.LearnerSession` (``me``): the check
    then runs on your Envoy and is reported to the instructor, whose control plane confirms it.
    """
    try:
        ex = find_exercise(key)
    except KeyError as exc:
        result = Checked(key, _learner(lab), False, _("check('2.1', lab, answer): the key is the exercise's number"),
                         str(exc.args[0]))  # fmt: skip
    else:
        if hasattr(lab, "report") and hasattr(lab, "lab"):  # a workshop's LearnerSession: check and report
            raw = lab.check(key)
        else:
            raw = ex.check(lab, *answers)
        result = Checked(**asdict(raw), title=_(ex.title))
    ip = _ipython()
    if ip is not None:
        result = Checked(**{**asdict(result), "shown_in": ip.execution_count})
        _display(result)
    if result.symbol != "✓" and _strict():
        raise ExerciseFailed(str(result))
    return result


def _learner(lab: Any) -> str:
    return str(getattr(lab, "node_id", None) or "learner")


def namespace(lab: Any, **names: Any) -> dict[str, Any]:
    """What an exercise's code may use outside a notebook: ``lab``, ``labxds`` and ``names``."""
    import labxds  # the top package: the course's code is written against it, as learners write it

    return {"lab": lab, "labxds": labxds, **names}


def run_code(code: str, ns: dict[str, Any], *, where: str = "<exercise>") -> None:
    """Run an exercise's code (placeholder, solution, a mistake, its given) in ``ns``."""
    if code:
        exec(compile(code, where, "exec"), ns)  # noqa: S102 - the course's own code, shown to the learner


def answers_of(ex: Exercise, ns: Mapping[str, Any]) -> tuple[Any, ...]:
    """The values an exercise's cell assigned, in the order its check takes them."""
    return tuple(ns.get(name) for name in ex.answers)


def solve(key: str, lab: Any, ns: dict[str, Any] | None = None) -> Any:
    """Show exercise ``key``'s solution, run it (in the notebook's namespace: its names are then
    defined, as if you had typed it), check it, and return the answer (a tuple for several)."""
    ex = find_exercise(key)
    ip = _ipython()
    if ns is None:
        ns = ip.user_ns if ip is not None else namespace(lab)
        if ip is None:
            run_code(ex.given, ns, where=f"<{key} given>")
    ns.setdefault("lab", lab)
    if "labxds" not in ns:
        ns.update({k: v for k, v in namespace(lab).items() if k == "labxds"})
    if ip is not None:
        markdown = importlib.import_module("IPython.display").Markdown
        heading = _("Solution of {key}, {title}:").format(key=key, title=_(ex.title))
        _show(markdown(f"**{heading}**\n\n```python\n{ex.solution}\n```"))
    run_code(ex.solution, ns, where=f"<{key} solution>")
    values = answers_of(ex, ns)
    check(key, lab, *values)
    return values[0] if len(values) == 1 else values


def exercises(lesson: int | None = None) -> pd.DataFrame:
    """The course's exercises (one lesson's with ``lesson``): key, title, task, in the learner's language."""
    import pandas as pd

    rows = [{"key": e.key, "title": _(e.title), "task": _(e.task)} for e in course_exercises(lesson)]
    return pd.DataFrame(rows, columns=["key", "title", "task"])
