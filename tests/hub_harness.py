"""A real JupyterHub on loopback for the tests: its real proxy, its REST API, learners' kernels.

The hub runs deploy/jupyterhub/jupyterhub_config.py, the file an instructor runs, with the
environment pointing its ports at free ones and its state at a temporary folder. Learners log
in through the hub's REST API (a token requested with their name and the class password),
start their servers through it, and run code in a kernel of their own server over the
kernel's websocket, all through the hub's proxy (configurable-http-proxy).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "deploy" / "jupyterhub" / "jupyterhub_config.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def missing_parts() -> str | None:
    """Why a hub cannot run here (None if it can): what to install."""
    chp = Path(sys.prefix) / "bin" / "configurable-http-proxy"
    if not (chp.exists() or shutil.which("configurable-http-proxy")):
        return ("configurable-http-proxy (JupyterHub's proxy, from npm) is not installed: install Node.js >= 20 "
                "and npm, then `make venv` installs it into .venv")
    if not shutil.which("node"):
        return "node is not on PATH (configurable-http-proxy runs on Node.js >= 20)"
    for module in ("jupyterhub", "jupyter_server_proxy"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed: run `make venv` (requirements.txt pins it)"
    return None


class Hub:
    """``jupyterhub -f deploy/jupyterhub/jupyterhub_config.py`` in a folder of its own."""

    def __init__(self, workdir: Path, roster: list[str], *, instructors: tuple[str, ...] = ("instructor",),
                 env: dict[str, str] | None = None) -> None:
        self.dir = workdir
        self.roster = roster
        self.instructors = instructors
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = f"{self.url}/hub/api"
        self.xds_port = free_port()
        self.workshop_port = free_port()
        self.class_password = "class-" + uuid.uuid4().hex[:12]
        self.instructor_password = "instructor-" + uuid.uuid4().hex  # 32+ characters
        self.env = {
            **os.environ,
            "LABXDS_HUB_URL": self.url,
            "LABXDS_HUB_API_PORT": str(free_port()),
            "LABXDS_PROXY_API_PORT": str(free_port()),
            "LABXDS_HUB_DATA": str(workdir / "data"),
            "LABXDS_ROSTER": str(workdir / "roster.txt"),
            "LABXDS_INSTRUCTORS": ",".join(instructors),
            "LABXDS_CLASS_PASSWORD": self.class_password,
            "LABXDS_INSTRUCTOR_PASSWORD": self.instructor_password,
            "LABXDS_XDS_PORT": str(self.xds_port),
            "LABXDS_WORKSHOP_PORT": str(self.workshop_port),
            # a port block well away from the free ports the kernel hands out
            "LABXDS_PORT_BASE": str(env.get("LABXDS_PORT_BASE") if env else 21000 + (os.getpid() % 200) * 20),
            **(env or {}),
        }
        self.env.pop("JUPYTERHUB_API_TOKEN", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(timeout=60, trust_env=False)
        self.tokens: dict[str, str] = {}

    # -- the hub process ----------------------------------------------------------------------

    def start(self, timeout: float = 60) -> Hub:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "roster.txt").write_text("".join(f"{n}\n" for n in self.roster))
        self.log_path = self.dir / "jupyterhub.log"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(CONFIG)], cwd=self.dir, env=self.env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyterhub exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                if self.client.get(f"{self.api}/").status_code == 200 and self._service_up():
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"jupyterhub did not answer at {self.url} within {timeout:g}s:\n{self.log_tail()}")

    def _service_up(self) -> bool:
        try:
            return self.client.get(f"http://127.0.0.1:{self.workshop_port}/services/workshop/health").status_code == 200
        except httpx.HTTPError:
            return False

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def descendants(self) -> set[int]:
        """Every process the hub started, however deep (servers, kernels, Envoys, its service)."""
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                ppid = int(stat[stat.rfind(")") + 2:].split()[1])
                children.setdefault(ppid, []).append(int(entry))
        out: set[int] = set()
        todo = [self.proc.pid] if self.proc is not None else []
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in out:
                    out.add(child)
                    todo.append(child)
        return out

    def stop(self, grace: float = 10) -> None:
        """SIGTERM the hub (it stops the learners' servers and its service); after ``grace``
        seconds, SIGKILL whatever it started that is still there (only those processes)."""
        if self.proc is None:
            return
        started = self.descendants()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        for pid in started | ({self.proc.pid} if self.proc.poll() is None else set()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)
        self.client.close()

    # -- the REST API -------------------------------------------------------------------------

    def login(self, name: str, password: str | None = None) -> str:
        """A token for ``name``, requested through the REST API with their password."""
        password = password or (self.instructor_password if name in self.instructors else self.class_password)
        r = self.client.post(f"{self.api}/users/{name}/tokens",
                             json={"auth": {"username": name, "password": password}, "note": "test"})  # fmt: skip
        r.raise_for_status()
        self.tokens[name] = r.json()["token"]
        return self.tokens[name]

    def headers(self, name: str) -> dict[str, str]:
        return {"Authorization": f"token {self.tokens[name]}"}

    def user(self, name: str) -> dict[str, Any]:
        r = self.client.get(f"{self.api}/users/{name}", headers=self.headers(name))
        r.raise_for_status()
        return r.json()

    def start_server(self, name: str, timeout: float = 90) -> None:
        r = self.client.post(f"{self.api}/users/{name}/server", headers=self.headers(name))
        assert r.status_code in (201, 202), f"starting {name}'s server: {r.status_code} {r.text}\n{self.log_tail()}"

    def wait_ready(self, name: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = self.user(name)["servers"].get("")
            if server and server.get("ready"):
                return
            if server is None and time.monotonic() > deadline - timeout + 5:
                raise RuntimeError(f"{name}'s server is not starting:\n{self.log_tail()}")
            time.sleep(0.25)
        raise TimeoutError(f"{name}'s server was not ready within {timeout:g}s:\n{self.log_tail()}")

    def stop_server(self, name: str, timeout: float = 60) -> None:
        r = self.client.delete(f"{self.api}/users/{name}/server", headers=self.headers(name))
        assert r.status_code in (202, 204), f"stopping {name}'s server: {r.status_code} {r.text}"
        deadline = time.monotonic() + timeout
        while self.user(name)["servers"]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}'s server did not stop within {timeout:g}s")
            time.sleep(0.25)

    def get(self, path: str, name: str | None = None, **kwargs: Any) -> httpx.Response:
        """GET a path through the hub's proxy, as ``name`` (their token) or anonymously."""
        headers = self.headers(name) if name else {}
        return self.client.get(f"{self.url}{path}", headers=headers, **kwargs)

    def kernel(self, name: str) -> RemoteKernel:
        r = self.client.post(f"{self.url}/user/{name}/api/kernels", headers=self.headers(name), json={"name": "python3"})
        assert r.status_code == 201, f"{name}: starting a kernel: {r.status_code} {r.text}"
        return RemoteKernel(self, name, r.json()["id"])


class KernelError(AssertionError):
    pass


class RemoteKernel:
    """A kernel of a learner's server, driven over its websocket through the hub's proxy."""

    def __init__(self, hub: Hub, user: str, kernel_id: str) -> None:
        self.hub, self.user, self.id = hub, user, kernel_id
        self.session = uuid.uuid4().hex

    def execute(self, code: str, timeout: float = 90) -> str:
        """Run ``code``; returns what it printed (and its result); raises KernelError on an error."""
        return asyncio.run(self._execute(code, timeout))

    async def _execute(self, code: str, timeout: float) -> str:
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect

        url = f"ws://127.0.0.1:{self.hub.port}/user/{self.user}/api/kernels/{self.id}/channels?session_id={self.session}"
        ws = await websocket_connect(HTTPRequest(url, headers=self.hub.headers(self.user)))
        msg_id = uuid.uuid4().hex
        ws.write_message(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "session": self.session,
                       "username": self.user, "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        }))  # fmt: skip
        out: list[str] = []
        error: str | None = None
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.user}'s kernel did not finish within {timeout:g}s: {code[:200]}\n{''.join(out)}")
                raw = await asyncio.wait_for(ws.read_message(), left)
                if raw is None:
                    raise KernelError(f"{self.user}'s kernel websocket closed")
                msg = json.loads(raw)
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind, content = msg["msg_type"], msg["content"]
                if kind == "stream":
                    out.append(content["text"])
                elif kind in ("execute_result", "display_data"):
                    out.append(content["data"].get("text/plain", "") + "\n")
                elif kind == "error":
                    error = "\n".join(content.get("traceback") or [f"{content['ename']}: {content['evalue']}"])
                elif kind == "status" and content["execution_state"] == "idle":
                    break
        finally:
            ws.close()
        if error is not None:
            import re

            plain = re.sub(r"\x1b\[[0-9;]*m", "", error)
            raise KernelError(f"{self.user}'s kernel: {plain}\n{''.join(out)}")
        return "".join(out)
