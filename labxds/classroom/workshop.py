"""One control plane for a whole class: per-learner snapshots, groups, exercises and their checks.

The instructor runs one :class:`Workshop`; every learner runs a real Envoy (and the echo
services) on their own machine, bootstrapped with ``python -m labxds bootstrap --node NAME
--control-plane HOST:PORT`` or ``Lab(control_plane="HOST:PORT", node_id=NAME)``. The node id
is the learner's name.

* ``broadcast(snapshot)`` sets the class default; ``push(snapshot, to=...)`` gives one learner, a
  named group or a list of them their own snapshot, which overrides the default until
  ``reset(...)``. Setting a learner's snapshot wakes that learner's streams only.
* A snapshot may be a *template*, a function of the :class:`Learner`: learners' echo services
  and listeners live on their own ports (several learners on one machine, as in the tests),
  and each learner's Envoy tells the control plane where, in its bootstrap's node metadata.
* :data:`EXERCISES` are tasks with checks that look at the learner's REAL Envoy: its
  ``/config_dump`` (through :class:`~labxds.envoy.EnvoyAdmin`) and requests through its
  listener (:func:`~labxds.tables.curl`). A check returns pass or fail with a hint.
* Learners change their own configuration and report check results through the workshop's
  *desk*, a small HTTP API next to the control plane (:class:`LearnerSession` is its client):
  a learner may only push to, and report for, their own node (their token, when the workshop
  uses tokens). On one machine the instructor can also run the checks directly
  (``Workshop.check``), using the admin URL each learner's Envoy announced.

Learners, their bootstraps and snapshot templates live in :mod:`labxds.learners`, the exercises
in :mod:`labxds.exercises`, the desk in :mod:`labxds.desk`; this module re-exports what a
workshop notebook needs. See docs/workshop.md for a class run through step by step.

Why one file of about 600 lines: it is one class, :class:`Workshop`, the instructor's whole API
(about forty short methods over one roster, one lock and one control plane). Everything that
stands alone already lives beside it (learners, exercises, the desk, the store).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..i18n import _
from ..xds.control_plane import ControlPlane
from ..xds.snapshot import Snapshot
from ..xds.tracking import PushRejected, PushTimeout, remover
from .desk import Desk
from .exercises import EXERCISES, CheckResult, Exercise
from .learners import Learner
from .recipes import recipe_of, spec_from_recipe
from .store import Store
from .templates import (
    SnapshotSpec,
    describe_spec,
    render,
)

__all__ = ["Workshop"]

log = logging.getLogger("labxds")


# --------------------------------------------------------------------------- the workshop


class Workshop:
    """The instructor's side: one control plane, per-learner snapshots, groups, progress.

    ``Workshop(port=18000)`` starts its own control plane (``host`` beyond 127.0.0.1 only when
    you say so; ``tokens=True`` for per-learner tokens, ``tls=DIR`` for TLS with a CA made in
    DIR); ``Workshop(control_plane)`` drives one you already run (without tokens or TLS).
    ``store=PATH`` keeps the roster, tokens, snapshots, groups and results in SQLite and reloads
    them, so a restarted workshop serves every learner what it served them before.
    """

    def __init__(
        self,
        control_plane: ControlPlane | None = None,
        *,
        port: int = 18000,
        host: str = "127.0.0.1",
        tokens: bool | Mapping[str, str] = False,
        tls: str | Path | None = None,
        desk_port: int | None = 0,
        exercises: Mapping[str, Exercise] | None = None,
        store: str | Path | Store | None = None,
    ) -> None:
        self._lock = threading.RLock()
        self._tokens: dict[str, str] = {}
        self.token_required = bool(tokens)
        self._authorizer: Callable[[str, Mapping[str, str]], bool] | None = None
        self.tls_dir: Path | None = None
        self.tls_files: Any = None
        self._ca: Any = None
        if control_plane is not None:
            if tokens or tls is not None:
                raise ValueError(_("tokens and TLS need the workshop to create its control plane: "
                                   "Workshop(port=..., tokens=True, tls=DIR)"))  # fmt: skip
            self.control_plane = control_plane
        else:
            credentials = self._setup_tls(Path(tls)) if tls is not None else None
            if isinstance(tokens, Mapping):
                self._tokens.update(tokens)
            self._rebuild_authorizer()
            self.control_plane = ControlPlane(
                port, host, authorize=self.authorize if self.token_required else None,
                server_credentials=credentials,
            )
        self.exercises: dict[str, Exercise] = dict(exercises if exercises is not None else EXERCISES)
        self.groups: dict[str, list[str]] = {}
        self.prepared: dict[str, SnapshotSpec] = {}
        self._roster: list[str] = list(self._tokens)
        self._learners: dict[str, Learner] = {}
        self._pending_meta: set[str] = set()
        self._class: SnapshotSpec | None = None  # the class default (a Snapshot or a template)
        self._own: dict[str, SnapshotSpec] = {}  # learners with a snapshot of their own
        self._rendered: set[str] = set()  # learners whose cache entry is the class template's
        self._templated: set[str] = set()  # learners whose cache entry a template rendered for them
        self.progress: dict[str, dict[str, CheckResult]] = {}
        self._listeners: list[Callable[[str, str | None], None]] = []
        self._unhook: list[Callable[[], None]] = []
        self._desk_port = desk_port
        self._desk: Desk | None = None
        for key, ex in self.exercises.items():
            if ex.start is not None:
                self.prepared[f"{key}: start"] = ex.start
            if ex.solved is not None:
                self.prepared[f"{key}: solution"] = ex.solved
        self.store: Store | None = None
        if store is not None:
            self.store = store if isinstance(store, Store) else Store(store)
            self._restore()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Workshop:
        cp = self.control_plane.start()
        self.control_plane = cp
        if not self._unhook:
            self._unhook = [cp.on("stream_open", self._on_open), cp.on("request", self._on_request),
                            cp.on("stream_close", self._on_close)]  # fmt: skip
        if self._desk_port is not None and self._desk is None:
            self._desk = Desk(self, cp.host, self._desk_port).start()
        return self

    def stop(self) -> None:
        for unhook in self._unhook:
            unhook()
        self._unhook = []
        if self._desk is not None:
            self._desk.stop()
            self._desk = None
        self.control_plane.stop()
        if self.store is not None:
            self.store.close()

    def __enter__(self) -> Workshop:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return _("<Workshop {address}: {n} learner(s), {connected} connected>").format(
            address=self.control_plane.address, n=len(self.learners()), connected=len(self.control_plane.nodes()))

    @property
    def address(self) -> str:
        """HOST:PORT of the control plane, what learners pass to ``--control-plane``."""
        return self.control_plane.address

    @property
    def desk_url(self) -> str | None:
        """Where learners push their own snapshots and report checks (None without a desk)."""
        return self._desk.url if self._desk is not None else None

    # -- access ------------------------------------------------------------------------------

    def _setup_tls(self, directory: Path) -> Any:
        from ..tls import load_credential, make_ca, server_credentials, write_tls_files

        # The CA stays in DIR (its key 0600): a restarted workshop goes on trusting, and issuing
        # from, the CA whose certificates learners already hold.
        ca_cert, ca_key = directory / "ca.pem", directory / "ca-key.pem"
        if ca_cert.exists() and ca_key.exists():
            self._ca = load_credential(ca_cert, ca_key)
        else:
            self._ca = make_ca("labxds workshop CA", days=365)
            directory.mkdir(parents=True, exist_ok=True)
            self._ca.write(ca_cert, ca_key)
        self.tls_dir = directory
        self.tls_files = write_tls_files(directory, ca=self._ca, client_name="instructor")
        return server_credentials(self.tls_files)

    def _rebuild_authorizer(self) -> None:
        if not self.token_required:
            return
        from ..tls import TokenAuthorizer

        self._authorizer = TokenAuthorizer(dict(self._tokens))

    def authorize(self, node_id: str, metadata: Mapping[str, str]) -> bool:
        """Whether ``node_id`` may fetch its snapshot or use the desk, given its token metadata."""
        authorizer = self._authorizer
        return authorizer is not None and authorizer(node_id, metadata)

    def add_learner(self, name: str, token: str | None = None) -> str | None:
        """Put ``name`` on the roster; with tokens, returns the learner's token (made if not given)."""
        if not name:
            raise ValueError(_("a learner needs a name (their node id)"))
        with self._lock:
            if name in self.groups:
                raise ValueError(_("'{name}' is already a group's name").format(name=name))
            if name not in self._roster:
                self._roster.append(name)
            if self.token_required:
                self._tokens[name] = token or self._tokens.get(name) or secrets.token_urlsafe(16)
                self._rebuild_authorizer()
            if self.store is not None:
                self.store.save_learner(name, self._tokens.get(name))
            return self._tokens.get(name) if self.token_required else None

    def token(self, name: str) -> str | None:
        return self._tokens.get(name)

    def learner_tls(self, name: str, directory: str | Path | None = None, *,
                    reuse: bool = False) -> tuple[Path, Path, Path]:
        """Issue ``name`` a client certificate from the workshop's CA: (ca, cert, key) paths.

        ``reuse=True`` returns the certificate issued before, if its files are there.
        """
        if self._ca is None or self.tls_files is None:
            raise RuntimeError(_("this workshop has no TLS: Workshop(tls=DIR)"))
        from ..tls import issue

        out = Path(directory) if directory is not None else (self.tls_dir or Path("."))
        cert, key = out / f"{name}.pem", out / f"{name}-key.pem"
        if reuse and cert.exists() and key.exists():
            return Path(self.tls_files.ca), cert, key
        out.mkdir(parents=True, exist_ok=True)
        cert, key = issue(self._ca, name, client=True).write(cert, key)
        return Path(self.tls_files.ca), cert, key

    def bootstrap_command(self, name: str, host: str | None = None) -> str:
        """The command line a learner runs to write their bootstrap."""
        address = f"{host}:{self.control_plane.port}" if host else self.address
        parts = ["python -m labxds bootstrap", f"--node {name}", f"--control-plane {address}"]
        if self._tokens.get(name):
            parts.append(f"--token {self._tokens[name]}")
        if self.tls_files is not None:
            parts += ["--tls-ca ca.pem", f"--tls-cert {name}.pem", f"--tls-key {name}-key.pem"]
        return " ".join(parts) + " -o envoy.yaml"

    # -- who is there ------------------------------------------------------------------------

    def learners(self) -> list[str]:
        """The roster, then every other node that ever connected, in order of arrival."""
        with self._lock:
            names = list(self._roster)
            names += [n for n in self._learners if n not in names]
        seen = set(names)
        status = self.control_plane.tracker
        names += [n for n in status.connected() if n not in seen]
        return names

    def learner(self, name: str) -> Learner:
        """What the learner's Envoy announced (defaults if it has not connected yet)."""
        with self._lock:
            return self._learners.get(name) or Learner(name)

    def group(self, name: str, members: Iterable[str]) -> list[str]:
        """Name a group of learners (``push(..., to=name)`` then reaches them all)."""
        with self._lock:
            if name in self._roster or name in self._learners:
                raise ValueError(_("'{name}' is a learner's name; choose another group name").format(name=name))
            self.groups[name] = list(dict.fromkeys(members))
            if self.store is not None:
                self.store.save_group(name, self.groups[name])
        self._changed("group", None)
        return self.groups[name]

    def resolve(self, to: str | Iterable[str]) -> list[str]:
        """Learner names for a learner, a group, or a list of both."""
        items = [to] if isinstance(to, str) else list(to)
        out: list[str] = []
        for item in items:
            out.extend(self.groups.get(item, [item]))
        return list(dict.fromkeys(out))

    # -- snapshots ---------------------------------------------------------------------------

    def prepare(self, name: str, spec: SnapshotSpec) -> None:
        """Keep a snapshot (or template) under ``name`` for the dashboard's selector."""
        self.prepared[name] = spec
        self._changed("prepared", None)

    def _spec(self, spec: SnapshotSpec | str) -> SnapshotSpec:
        if isinstance(spec, str):
            try:
                return self.prepared[spec]
            except KeyError:
                raise KeyError(_("no prepared snapshot '{name}'; prepared: {prepared}").format(
                    name=spec, prepared=", ".join(self.prepared))) from None
        return spec

    def broadcast(self, spec: SnapshotSpec | str, *, wait: bool = True, timeout: float = 10.0) -> None:
        """Make ``spec`` the class default: every learner without a snapshot of their own gets it."""
        spec = self._spec(spec)
        cp = self.control_plane
        since = time.time()
        with self._lock:
            self._class = spec
            if isinstance(spec, Snapshot):
                cp.cache.set(spec, None)
                stale, self._rendered = self._rendered, set()
                for name in stale:
                    cp.cache.clear(name)
                self._templated -= stale
                applied = {n: spec for n in cp.nodes() if n not in self._own}
            else:
                if not callable(spec):  # resources: one snapshot for all
                    return self.broadcast(Snapshot(spec), wait=wait, timeout=timeout)
                targets = [n for n in self._known() if n not in self._own]
                applied = self._set_each(spec, targets, rendered=True)
            self._save_spec("", spec)
            self._save_served(self._known(), default=True)
        self._changed("snapshot", None)
        if wait:
            self._wait(applied, since, timeout)

    def push(self, spec: SnapshotSpec | str, to: str | Iterable[str], *, wait: bool = True,
             timeout: float = 10.0) -> dict[str, Snapshot]:
        """Give the learners ``to`` names (learners, groups) their own snapshot; returns them."""
        spec = self._spec(spec)
        names = self.resolve(to)
        if not names:
            raise ValueError(_("push to whom? name learners or a group"))
        since = time.time()
        with self._lock:
            for name in names:
                self._own[name] = spec
            applied = self._set_each(spec, names, rendered=False)
            for name in names:
                self._save_spec(name, spec)
            self._save_served(names)
        for name in names:
            self._changed("snapshot", name)
        if wait:
            self._wait(applied, since, timeout)
        return applied

    def reset(self, to: str | Iterable[str], *, wait: bool = True, timeout: float = 10.0) -> None:
        """Drop the learners' own snapshots: they follow the class default again."""
        names = self.resolve(to)
        since = time.time()
        cp = self.control_plane
        with self._lock:
            for name in names:
                self._own.pop(name, None)
            if self._class is not None and not isinstance(self._class, Snapshot):
                applied = self._set_each(self._class, names, rendered=True)
            else:
                for name in names:
                    cp.cache.clear(name)
                    self._rendered.discard(name)
                applied = {n: cp.cache.default for n in names if cp.cache.default is not None}
            if self.store is not None:
                for name in names:
                    self.store.drop_spec(name)
            self._save_served(names)
        for name in names:
            self._changed("snapshot", name)
        if wait:
            self._wait(applied, since, timeout)

    def snapshot_of(self, name: str) -> Snapshot | None:
        """The snapshot ``name`` is served now."""
        return self.control_plane.cache.get(name)

    def source_of(self, name: str) -> str:
        """"own: ..." or "class: ..." or "-": where the learner's snapshot comes from."""
        with self._lock:
            if name in self._own:
                return f"own: {describe_spec(self._own[name])}"
            if self._class is not None:
                return f"class: {describe_spec(self._class)}"
        return "-"

    def _known(self) -> list[str]:
        return list(dict.fromkeys([*self._roster, *self._learners, *self.control_plane.nodes()]))

    def _set_each(self, spec: SnapshotSpec, names: Sequence[str], *, rendered: bool) -> dict[str, Snapshot]:
        """Render ``spec`` for each learner and set it; returns what was set.

        A template waits for learners whose Envoy has not announced itself yet: it is rendered
        when they connect (``_on_request``).
        """
        cp = self.control_plane
        template = not isinstance(spec, Snapshot)
        out: dict[str, Snapshot] = {}
        for name in names:
            if rendered:
                self._rendered.add(name)
            else:
                self._rendered.discard(name)
            if template and name not in self._learners:
                self._templated.discard(name)
                continue
            try:
                out[name] = render(spec, self.learner(name))
            except (KeyError, ValueError) as exc:
                text = exc.args[0] if exc.args else exc
                raise ValueError(_("cannot build {spec} for learner '{name}': {problem}").format(
                    spec=describe_spec(spec), name=name, problem=text)) from exc
        for name, snap in out.items():
            cp.cache.set(snap, name)
            if template:
                self._templated.add(name)
            else:
                self._templated.discard(name)
        return out

    def _wait(self, applied: Mapping[str, Snapshot], since: float, timeout: float) -> None:
        cp = self.control_plane
        connected = set(cp.nodes())
        groups: dict[int, tuple[Snapshot, list[str]]] = {}
        for name, snap in applied.items():
            if name in connected:
                groups.setdefault(id(snap), (snap, []))[1].append(name)
        errors: dict[tuple[str, str], str] = {}
        missing: list[str] = []
        deadline = time.monotonic() + timeout
        for snap, names in groups.values():
            left = max(0.1, deadline - time.monotonic())
            try:
                cp.tracker.wait_applied(snap, names, left, since, cp.cache.get)
            except PushRejected as exc:
                errors.update(exc.errors)
            except PushTimeout as exc:
                missing.extend(exc.missing)
        # A version the learner refused before is not sent again (rule 4): waiting sees nothing
        # new, so say it was refused rather than applied.
        for snap, names in groups.values():
            for name in names:
                status = cp.tracker.node(name)
                for url, version in snap.versions.items():
                    st = status.types.get(url) if status else None
                    if st is not None and st.nacked_version == version and (
                        st.acked_at is None or (st.nacked_at or 0) > st.acked_at
                    ):
                        errors.setdefault((name, url), st.nack_error or "")
        if errors:
            raise PushRejected(errors)
        if missing:
            raise PushTimeout(missing, timeout)

    # -- the store ---------------------------------------------------------------------------

    def _save_spec(self, name: str, spec: SnapshotSpec) -> None:
        if self.store is not None:
            self.store.save_spec(name, recipe_of(spec), describe_spec(spec))

    def _save_served(self, names: Iterable[str], *, default: bool = False) -> None:
        """Write what the control plane serves ``names`` (and the default) now."""
        if self.store is None:
            return
        cache = self.control_plane.cache
        entries: dict[str, tuple[Snapshot, bool, bool]] = {}
        dropped = []
        for name in dict.fromkeys(names):
            own = cache.own(name)
            if own is None:
                dropped.append(name)
            else:
                entries[name] = (own, name in self._templated, name in self._rendered)
        if default and cache.default is not None:
            entries[""] = (cache.default, False, False)
        self.store.save_served(entries, dropped)

    def _restore(self) -> None:
        """Read the store back: roster, tokens, learners, groups, specs, served snapshots, results."""
        assert self.store is not None
        saved = self.store.load()
        cache = self.control_plane.cache
        for name, on_roster, token, metadata in saved.learners:
            if on_roster and name not in self._roster:
                self._roster.append(name)
            if token and self.token_required:
                self._tokens.setdefault(name, token)
            if metadata is not None:
                self._learners[name] = Learner.from_metadata(name, metadata)
        self._rebuild_authorizer()
        self.groups.update(saved.groups)
        for name, (snapshot, templated, rendered) in saved.served.items():
            cache.set(snapshot, name or None)
            if name and templated:
                self._templated.add(name)
            if name and rendered:
                self._rendered.add(name)
        for name, (recipe, description) in saved.specs.items():
            spec: SnapshotSpec | None = None
            if recipe is not None:
                try:
                    spec = spec_from_recipe(recipe)
                except ValueError as exc:
                    log.warning("labxds workshop: %s: cannot rebuild %s for %r: %s", self.store.path,
                                description, name or "the class", exc)  # fmt: skip
            if spec is None:
                served = saved.served.get(name)
                log.warning("labxds workshop: %s was a function of your own and is not kept; %s keeps "
                            "the snapshot it was served: push or broadcast it again to render it anew",
                            description, name or "the class")  # fmt: skip
                spec = served[0] if served is not None else None
            if spec is None:
                continue
            if name:
                self._own[name] = spec
            else:
                self._class = spec
        for data in saved.results:
            result = CheckResult(**{k: data[k] for k in ("exercise", "learner", "passed", "hint", "detail", "at",
                                                          "confirmed", "evidence") if k in data})  # fmt: skip
            self.progress.setdefault(result.learner, {})[result.exercise] = result
        if saved.learners or saved.served:
            log.info("labxds workshop: %s: %d learner(s), %d snapshot(s) and %d result(s) restored",
                     self.store.path, len(saved.learners), len(saved.served), len(saved.results))  # fmt: skip

    # -- the control plane's events (on its thread) -----------------------------------------

    def _on_open(self, node_id: str, stream: int) -> None:
        with self._lock:
            self._pending_meta.add(node_id)
        self._changed("connect", node_id)

    def _on_close(self, node_id: str, stream: int) -> None:
        self._changed("disconnect", node_id)

    def _on_request(self, node_id: str, request: Any) -> None:
        if node_id not in self._pending_meta:
            self._changed("request", node_id)
            return
        from google.protobuf import json_format

        meta = json_format.MessageToDict(request.node.metadata) if request.HasField("node") else {}
        learner = Learner.from_metadata(node_id, meta)
        with self._lock:
            self._pending_meta.discard(node_id)
            changed = self._learners.get(node_id) != learner
            self._learners[node_id] = learner
            spec = self._own.get(node_id)
            rendered = False
            if spec is None and self._class is not None and not isinstance(self._class, Snapshot):
                spec, rendered = self._class, True
            rerendered = False
            if spec is not None and not isinstance(spec, Snapshot) and (changed or node_id not in self._templated):
                try:  # the stream reads its snapshot after this hook: it starts with the right one
                    self._set_each(spec, [node_id], rendered=rendered)
                    rerendered = True
                except Exception:
                    log.exception("labxds workshop: cannot render %s for learner %r", describe_spec(spec), node_id)
            if self.store is not None:
                if changed:
                    self.store.save_metadata(node_id, learner.metadata())
                if rerendered:
                    self._save_served([node_id])
        self._changed("learner", node_id)

    # -- progress ----------------------------------------------------------------------------

    def record(self, result: CheckResult) -> CheckResult:
        """Keep a check result (a learner's report, or a check the instructor ran), with what the
        control plane knows of that learner's configuration (:meth:`Exercise.confirm`)."""
        exercise = self.exercises.get(result.exercise)
        if exercise is not None:
            confirmed, evidence = exercise.confirm(self.control_plane, self.learner(result.learner))
            result = replace(result, confirmed=confirmed, evidence=evidence)
            if result.contradicted:
                log.warning("%s", _("labxds workshop: {learner} reports {exercise} passed, but {evidence}").format(
                    learner=result.learner, exercise=result.exercise, evidence=evidence))
        with self._lock:
            self.progress.setdefault(result.learner, {})[result.exercise] = result
            if self.store is not None:
                self.store.save_result(result.to_dict())
        self._changed("progress", result.learner)
        return result

    def check(self, exercise: str, learner: str) -> CheckResult:
        """Run ``exercise``'s check on ``learner``'s Envoy from here (needs its admin URL reachable)."""
        ex = self.exercises[exercise]
        try:
            target = self.learner(learner)
            result = ex.check(target, learner=learner)
        except ValueError as exc:
            result = CheckResult(exercise, learner, False, "run the check on the learner's machine", str(exc))
        return self.record(result)

    def check_all(self, exercise: str, to: str | Iterable[str] | None = None) -> list[CheckResult]:
        names = self.resolve(to) if to is not None else [n for n in self.learners() if n in self.control_plane.nodes()]
        return [self.check(exercise, n) for n in names]

    def assign(self, exercise: str, to: str | Iterable[str] | None = None, *, wait: bool = True,
               timeout: float = 10.0) -> None:
        """Push ``exercise``'s starting snapshot to ``to`` (default: the whole class)."""
        ex = self.exercises[exercise]
        if ex.start is None:
            return
        try:
            if to is None:
                self.broadcast(ex.start, wait=wait, timeout=timeout)
            else:
                self.push(ex.start, to, wait=wait, timeout=timeout)
        except PushRejected:
            if exercise != "fix-nack":  # that one starts with a NACK on purpose
                raise

    def progress_rows(self) -> list[dict[str, Any]]:
        """Every learner's exercise results as records (``at`` in epoch seconds)."""
        return [
            {"learner": r.learner, "exercise": r.exercise, "passed": r.passed, "confirmed": r.confirmed,
             "detail": r.detail, "evidence": r.evidence, "hint": r.hint, "at": r.at}
            for results in self.progress.values() for r in results.values()
        ]  # fmt: skip

    # -- change notifications ----------------------------------------------------------------

    def on_change(self, callback: Callable[[str, str | None], None]) -> Callable[[], None]:
        """Call ``callback(kind, learner)`` after any change, from whichever thread made it."""
        self._listeners.append(callback)
        return remover(self._listeners, callback)

    def _changed(self, kind: str, learner: str | None) -> None:
        for callback in list(self._listeners):
            try:
                callback(kind, learner)
            except Exception:
                log.exception("labxds workshop listener %r failed", callback)
