"""docker-compose.yaml and the Dockerfiles, read as the harness needs them.

Everything the harness runs comes from here: each service's command (the compose file's, else its
Dockerfile's CMD), environment (the Dockerfile's ENV, then the compose file's), ports, network
aliases, replicas, volumes, health check and user. Nothing about a service is written twice, so
the compose file and the harness cannot drift apart.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "COMPOSE_FILE",
    "ROOT",
    "Published",
    "ServiceSpec",
    "dockerfile_instructions",
    "interpolate",
    "load_compose",
    "load_services",
]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"

_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` as `docker compose` reads it with no such variable set."""
    return _VAR.sub(lambda m: m.group(2) or "", value)


@dataclass(frozen=True)
class Published:
    """One ``ports:`` entry (short syntax): host address and port, container port."""

    host_ip: str
    host_port: str
    container_port: int

    @classmethod
    def parse(cls, entry: Any) -> Published:
        if not isinstance(entry, str):
            raise ValueError(f"use the short 'IP:HOST:CONTAINER' port syntax: {entry!r}")
        spec = interpolate(entry).split("/")[0]
        parts = spec.rsplit(":", 2)
        if len(parts) == 3:
            host_ip, host_port, container = parts
        elif len(parts) == 2:
            host_ip, (host_port, container) = "", parts
        else:
            host_ip, host_port, container = "", "", parts[0]
        return cls(host_ip.strip("[]"), host_port, int(container))


def dockerfile_instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), line continuations joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _exec_form(args: str, where: str) -> list[str]:
    """A CMD/ENTRYPOINT/HEALTHCHECK CMD in exec (JSON) form; the shell form is refused: it runs
    through /bin/sh, which turns SIGTERM into a hard kill of the real process."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        raise ValueError(f"{where}: use the exec form [\"prog\", \"arg\", ...], not {args!r}") from None
    if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
        raise ValueError(f"{where}: expected a JSON list of strings, got {args!r}")
    return value


def _env_pairs(args: str) -> dict[str, str]:
    """``ENV A=1 B="two words"`` (the key=value form; the legacy ``ENV A 1`` too)."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


@dataclass
class ServiceSpec:
    """One compose service, everything the harness needs to run it as processes."""

    name: str
    image: str | None = None
    dockerfile: Path | None = None
    command: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    ports: list[Published] = field(default_factory=list)
    expose: list[int] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    replicas: int = 1
    #: container path -> host path: volumes, and what the Dockerfile COPYs into the image
    paths: dict[str, Path] = field(default_factory=dict)
    workdir: str | None = None
    healthcheck: list[str] | None = None
    user: str | None = None
    depends_on: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """Every name the service answers to on the compose network."""
        return [self.name, *[a for a in self.aliases if a != self.name]]

    def container_ports(self) -> list[int]:
        return sorted({p.container_port for p in self.ports} | set(self.expose))


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        raise ValueError(f"{path}: no services: mapping")
    return data


def _dockerfile_of(build: Any, base: Path) -> Path:
    context = base / (build if isinstance(build, str) else build.get("context", "."))
    name = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    return context / name


def _from_dockerfile(spec: ServiceSpec, context: Path) -> None:
    """CMD, ENV, EXPOSE, USER, WORKDIR, HEALTHCHECK and the COPYs' container paths."""
    assert spec.dockerfile is not None
    workdir = "/"
    for word, args in dockerfile_instructions(spec.dockerfile):
        where = f"{spec.dockerfile.name}: {word}"
        if word == "FROM":
            spec.image = args.split()[0]
        elif word == "ENV":
            spec.environment.update(_env_pairs(args))
        elif word == "WORKDIR":
            workdir = args if args.startswith("/") else f"{workdir.rstrip('/')}/{args}"
            spec.workdir = workdir
        elif word == "COPY":
            parts = [a for a in shlex.split(args) if not a.startswith("--")]
            *sources, target = parts
            into_dir = target.endswith("/")
            target = posixpath.normpath(target if target.startswith("/") else f"{workdir}/{target}")
            for source in sources:
                host = (context / source).resolve()
                into = posixpath.join(target, host.name) if (into_dir and host.is_file()) else target
                spec.paths[into] = host
        elif word == "EXPOSE":
            spec.expose += [int(p.split("/")[0]) for p in args.split()]
        elif word == "USER":
            spec.user = args.split(":")[0]
        elif word == "CMD":
            spec.command = _exec_form(args, where)
        elif word == "ENTRYPOINT":
            raise ValueError(f"{where}: the harness runs CMD only; an ENTRYPOINT would change what runs")
        elif word == "HEALTHCHECK":
            options, _, rest = args.partition("CMD ")
            if args.strip() == "NONE":
                spec.healthcheck = None
            else:
                spec.healthcheck = _exec_form(rest, where)
    if spec.workdir and any(p.startswith(spec.workdir.rstrip("/") + "/") for p in spec.paths):
        spec.paths.setdefault(spec.workdir, context.resolve())  # the build context's files, at WORKDIR


def _healthcheck(value: dict[str, Any], where: str) -> list[str] | None:
    test = value.get("test")
    if value.get("disable") or test in (["NONE"], "NONE"):
        return None
    if isinstance(test, str):
        raise ValueError(f"{where}: write healthcheck.test as [\"CMD\", ...] (a string runs through a shell)")
    if not test or test[0] != "CMD":
        raise ValueError(f"{where}: healthcheck.test should start with \"CMD\": {test!r}")
    return [str(t) for t in test[1:]]


def load_services(path: Path = COMPOSE_FILE) -> dict[str, ServiceSpec]:
    """Every service of the compose file as the harness runs it (compose order kept)."""
    compose = load_compose(path)
    base = path.parent
    out: dict[str, ServiceSpec] = {}
    for name, raw in compose["services"].items():
        spec = ServiceSpec(name=name, raw=raw)
        if "build" in raw:
            spec.dockerfile = _dockerfile_of(raw["build"], base)
            context = spec.dockerfile.parent if isinstance(raw["build"], str) else base / raw["build"].get("context", ".")
            _from_dockerfile(spec, context)
        if "image" in raw:
            spec.image = raw["image"]
        if "command" in raw:
            cmd = raw["command"]
            spec.command = shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]
        env = raw.get("environment", {})
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        spec.environment.update({k: interpolate(str(v)) for k, v in env.items()})
        spec.ports = [Published.parse(p) for p in raw.get("ports", [])]
        spec.expose += [int(str(p).split("/")[0]) for p in raw.get("expose", [])]
        networks = raw.get("networks", {})
        if isinstance(networks, dict):
            for net in networks.values():
                spec.aliases += list((net or {}).get("aliases", []))
        deploy = raw.get("deploy") or {}
        spec.replicas = int(deploy.get("replicas", raw.get("scale", 1)))
        for volume in raw.get("volumes", []):
            if isinstance(volume, str):
                source, target, *_ = interpolate(volume).split(":")
                if source.startswith((".", "/")):
                    spec.paths[target] = (base / source).resolve()
        if "healthcheck" in raw:
            spec.healthcheck = _healthcheck(raw["healthcheck"], f"{path.name}: {name}.healthcheck")
        if "user" in raw:
            spec.user = str(raw["user"]).split(":")[0]
        depends = raw.get("depends_on", {})
        spec.depends_on = (
            {d: "service_started" for d in depends}
            if isinstance(depends, list)
            else {d: (c or {}).get("condition", "service_started") for d, c in depends.items()}
        )
        if not spec.command:
            raise ValueError(
                f"{path.name}: service {name} has no command and no Dockerfile CMD the harness can read"
                " (for an image of someone else's, write its command in the compose file)"
            )
        out[name] = spec
    return out
