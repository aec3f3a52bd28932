"""The course's exercises, one module per lesson (``lesson01.py`` ... ``lesson14.py``).

Each module defines ``EXERCISES``, a sequence of :class:`~labxds.classroom.exercises.Exercise`
with keys "N.M" (lesson N, exercise M); importing this package registers them all, so
``labxds.classroom.exercise("2.1")`` finds any of them. A new lesson adds its module here and
nothing else. ``checks`` holds what their checks share: reading an answer, pushing it to the
learner's own Envoy, reading what Envoy runs.
"""

from __future__ import annotations

import importlib
import pkgutil
import re

from ..exercises import Exercise, register

__all__ = ["LESSON_MODULES", "lesson_exercises"]

#: The lesson modules found in this package, in order.
LESSON_MODULES: list[str] = sorted(
    info.name for info in pkgutil.iter_modules(__path__) if re.fullmatch(r"lesson\d\d", info.name)
)


def lesson_exercises(module: str) -> list[Exercise]:
    """The exercises one lesson module defines (``"lesson02"``)."""
    mod = importlib.import_module(f"{__name__}.{module}")
    found = list(getattr(mod, "EXERCISES", ()))
    number = int(module.removeprefix("lesson"))
    for ex in found:
        if ex.lesson != number:
            raise ValueError(f"{module} defines exercise {ex.key!r}: its key must start with {number}.")
    return found


for _module in LESSON_MODULES:
    register(*lesson_exercises(_module))
