"""A class on one control plane: the workshop, its learners, their snapshots, exercises and the desk.

``workshop`` runs the instructor's control plane with a roster, tokens, groups and per-learner
snapshots; ``learners`` says who a learner is and where their Envoy lives; ``templates`` build a
learner's own snapshot; ``exercises`` check a learner's real Envoy (the workshop's and the
course's: ``course`` holds each lesson's); ``desk`` is the HTTP door learners push and report through;
``store`` keeps the instructor's state in SQLite across restarts; ``service`` runs the workshop as a
JupyterHub service and ``spawn`` is what the hub's spawner hook gives each learner's server
(deploy/jupyterhub).
"""

from ..tls import TOKEN_HEADER
from .desk import Desk, LearnerSession
from .exercises import EXERCISES, CheckResult, Exercise, Fail, Target, course_exercises, exercise, register
from .learners import Learner, learner_bootstrap
from .service import WorkshopClient, WorkshopService, class_status
from .store import Store
from .templates import (
    SnapshotSpec,
    Template,
    broken_listener,
    canary,
    describe_spec,
    render,
    routes,
    sandbox,
)
from .workshop import Workshop

__all__ = [
    "EXERCISES",
    "TOKEN_HEADER",
    "CheckResult",
    "Desk",
    "Exercise",
    "Fail",
    "Learner",
    "LearnerSession",
    "SnapshotSpec",
    "Target",
    "Store",
    "Template",
    "Workshop",
    "WorkshopClient",
    "WorkshopService",
    "broken_listener",
    "canary",
    "course_exercises",
    "class_status",
    "describe_spec",
    "exercise",
    "learner_bootstrap",
    "register",
    "render",
    "routes",
    "sandbox",
]
