"""What JupyterHub gives each learner's single-user server: their node id, ports, token, addresses.

The hub's ``pre_spawn_hook`` (:func:`make_pre_spawn_hook`) runs in the hub's process before a
learner's server starts. It asks the instructor's workshop service to enroll the learner (an
authenticated request: the service's own hub API token is the credential), and puts what comes
back into the server's environment, where ``Lab`` and the learner notebook read it:

* ``LABXDS_NODE_ID``: the hub user name (the learner's Envoy's node id);
* ``LABXDS_CONTROL_PLANE``, ``LABXDS_DESK``: the instructor's control plane and desk;
* ``LABXDS_TOKEN``: the learner's workshop token, issued by the workshop (nobody copies it);
* ``LABXDS_TLS_*_PEM``: the workshop's CA and the learner's client certificate, with TLS on;
* ``LABXDS_ADMIN_PORT``, ``LABXDS_LISTENER_PORT``, ``LABXDS_SERVICE_PORTS``: on one machine,
  ports of the learner's own (a block per hub user id, so no two learners collide, and the same
  ones after a restart); in a pod of their own, the defaults.

This module needs only the standard library: the Zero to JupyterHub hub image has no labxds, so
the Helm values mount this very file into the hub (see deploy/jupyterhub/k8s/).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ENV",
    "PortBlock",
    "enroll",
    "learner_ports",
    "make_pre_spawn_hook",
    "server_proxy_servers",
    "tls_files_from_env",
    "token_matches",
]

#: The environment a learner's server gets (names shared with Lab, the notebook and the manifests).
ENV = {
    "node_id": "LABXDS_NODE_ID",
    "control_plane": "LABXDS_CONTROL_PLANE",
    "desk": "LABXDS_DESK",
    "workshop": "LABXDS_WORKSHOP_URL",
    "token": "LABXDS_TOKEN",
    "admin_port": "LABXDS_ADMIN_PORT",
    "listener_port": "LABXDS_LISTENER_PORT",
    "service_ports": "LABXDS_SERVICE_PORTS",
    "tls_ca_pem": "LABXDS_TLS_CA_PEM",
    "tls_cert_pem": "LABXDS_TLS_CERT_PEM",
    "tls_key_pem": "LABXDS_TLS_KEY_PEM",
}

#: Names under which jupyter-server-proxy serves a learner's Envoy: /user/NAME/envoy-admin/ ...
PROXY_ADMIN = "envoy-admin"
PROXY_LISTENER = "envoy"


@dataclass(frozen=True)
class PortBlock:
    """Ports of one learner's own on a shared machine: ``base + size * hub user id`` onwards.

    The hub's user ids are unique and kept in its database, so two learners never share a port
    and a learner keeps theirs across server restarts: their Envoy and echo services come back
    where the workshop's snapshot for them points, and the snapshot they get back is the same.
    """

    base: int = 20000
    size: int = 4
    services: tuple[str, ...] = ("service1", "service2")

    def ports(self, user_id: int) -> dict[str, int]:
        """Envoy admin, Envoy listener and each echo service's port for hub user ``user_id``."""
        if user_id < 0:
            raise ValueError(f"hub user id {user_id} is negative")
        names = ("admin", "listener", *self.services)
        if len(names) > self.size:
            raise ValueError(f"a block of {self.size} ports cannot hold {', '.join(names)}")
        first = self.base + self.size * user_id
        if first + len(names) - 1 > 65535:
            raise ValueError(f"no ports left for hub user id {user_id}: {first}+ is beyond 65535; "
                             f"lower the port base ({self.base})")
        return {name: first + i for i, name in enumerate(names)}


def learner_ports(block: PortBlock, user_id: int, name: str, host: str = "127.0.0.1") -> dict[str, str]:
    """The port environment for one learner; refuses ports another process holds, naming them."""
    ports = block.ports(user_id)
    for what, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise RuntimeError(
                    f"port {port} ({what} of learner {name!r}, hub user id {user_id}) is in use on "
                    f"{host}: {exc.strerror}. Another process holds it: stop it, or move the learners' "
                    f"ports (LABXDS_PORT_BASE, now {block.base})"
                ) from None
    services = ",".join(f"{s}={ports[s]}" for s in block.services)
    return {ENV["admin_port"]: str(ports["admin"]), ENV["listener_port"]: str(ports["listener"]),
            ENV["service_ports"]: services}


def token_matches(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison of a presented credential with the expected one."""
    return bool(given) and bool(expected) and hmac.compare_digest(str(given), str(expected))


def enroll(service_url: str, name: str, api_token: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """Ask the workshop service at ``service_url`` to enroll ``name``: its answer (token, ...).

    Blocking; the hook runs it in a thread. Retries while the service is starting (the hub starts
    it alongside itself), then fails with a message that says where it looked.
    """
    url = f"{service_url.rstrip('/')}/v1/enroll/{urllib.parse.quote(name, safe='')}"
    request = urllib.request.Request(url, method="POST", data=b"{}",
                                     headers={"Authorization": f"token {api_token}",
                                              "Content-Type": "application/json"})  # fmt: skip
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    last: Exception | None = None
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            with opener.open(request, timeout=5) as response:
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise RuntimeError(f"the workshop service refused to enroll {name!r} ({url}): "
                               f"HTTP {exc.code} {detail}") from None  # fmt: skip
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise RuntimeError(f"the workshop service did not answer at {url} within {timeout:g}s "
                               f"({last}): is it running? (jupyterhub's log says)") from None  # fmt: skip
        time.sleep(0.25)


def make_pre_spawn_hook(
    service_url: str,
    api_token: str | Callable[[], str],
    *,
    ports: PortBlock | None = None,
    extra_env: Mapping[str, str] | None = None,
    prepare_home: Callable[[Any], None] | None = None,
    instructors: Iterable[str] = (),
) -> Callable[[Any], Any]:
    """A ``Spawner.pre_spawn_hook``: enroll the learner and set their server's environment.

    ``service_url`` is where the hub reaches the workshop service; ``api_token`` the service's
    hub API token (the credential the service's enroll endpoint accepts). ``ports`` gives each
    learner a block of their own (one machine); None keeps the defaults (a pod each). The servers
    of ``instructors`` are not enrolled: they get ``LABXDS_WORKSHOP_URL`` to drive the class.
    """
    teachers = set(instructors)

    async def hook(spawner: Any) -> None:
        name = spawner.user.name
        if name in teachers:
            spawner.environment[ENV["workshop"]] = service_url
            if prepare_home is not None:
                prepare_home(spawner)
            return
        token = api_token() if callable(api_token) else api_token
        answer = await asyncio.get_running_loop().run_in_executor(None, enroll, service_url, name, token)
        env = spawner.environment
        env[ENV["node_id"]] = name
        env[ENV["token"]] = str(answer["token"])
        env[ENV["control_plane"]] = str(answer["control_plane"])
        env[ENV["desk"]] = str(answer["desk"])
        for key in ("tls_ca_pem", "tls_cert_pem", "tls_key_pem"):
            if answer.get(key):
                env[ENV[key]] = str(answer[key])
        if ports is not None:
            env.update(learner_ports(ports, int(spawner.user.id), name))
        env.update(extra_env or {})
        if prepare_home is not None:
            prepare_home(spawner)
        spawner.log.info("labxds: %s enrolled (node id %s, control plane %s, admin port %s)", name, name,
                         answer["control_plane"], env.get(ENV["admin_port"], "default"))

    return hook


def tls_files_from_env(directory: str | os.PathLike[str] | None = None,
                       environ: Mapping[str, str] | None = None) -> tuple[str, str, str] | None:
    """The workshop's CA and the learner's certificate, from the environment the hook set, as
    files (ca, cert, key) for ``Lab(tls=...)``; None when the workshop runs without TLS."""
    env = os.environ if environ is None else environ
    pems = [env.get(ENV[k]) for k in ("tls_ca_pem", "tls_cert_pem", "tls_key_pem")]
    if not all(pems):
        return None
    from pathlib import Path

    out = Path(directory) if directory is not None else Path.home() / ".labxds" / "tls"
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths = (out / "ca.pem", out / "learner.pem", out / "learner-key.pem")
    for path, pem in zip(paths, pems):
        path.write_text(str(pem))
        path.chmod(0o600)
    return str(paths[0]), str(paths[1]), str(paths[2])


def server_proxy_servers(environ: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """jupyter-server-proxy entries for the learner's Envoy: its admin and its listener.

    ``c.ServerProxy.servers = server_proxy_servers()`` in the single-user server's config: the
    learner then reaches ``/user/NAME/envoy-admin/`` and ``/user/NAME/envoy/`` through the hub's
    authenticated proxy, while Envoy itself listens on loopback only.
    """
    env = os.environ if environ is None else environ
    admin = int(env.get(ENV["admin_port"]) or 19000)
    listener = int(env.get(ENV["listener_port"]) or 10000)
    return {
        PROXY_ADMIN: {"port": admin, "launcher_entry": {"title": "Envoy admin", "category": "labxds"}},
        PROXY_LISTENER: {"port": listener, "launcher_entry": {"title": "Envoy listener", "category": "labxds"}},
    }
