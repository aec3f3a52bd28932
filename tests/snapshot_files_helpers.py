"""Snapshot files for tests: the sandbox's files written to a directory, editor-style saves, and
what an Envoy subscribed to them holds. Shared by tests/files and tests/cli."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import yaml

from labxds.envoy import Envoy

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sandbox"


def sandbox_docs(host: str = "127.0.0.1", port: int = 8080, *, listener_port: int = 10000,
                 version: str | None = "1") -> dict[str, dict]:
    """The example's three documents (cds, rds, lds), pointed at host:port and a listener port."""
    docs = {}
    for name in ("cds", "rds", "lds"):
        doc = yaml.safe_load((EXAMPLE / f"{name}.yaml").read_text())
        if version is None:
            doc.pop("version_info", None)
        else:
            doc["version_info"] = version
        docs[name] = doc
    sock = docs["cds"]["resources"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"
    ]
    sock.update(address=host, port_value=port)
    docs["lds"]["resources"][0]["address"]["socket_address"].update(address="127.0.0.1", port_value=listener_port)
    return docs


def write_sandbox(directory: Path, *args, **kw) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, doc in sandbox_docs(*args, **kw).items():
        (directory / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return directory


def one_file(path: Path, *args, **kw) -> Path:
    """The three resources in one file, version_info once."""
    docs = sandbox_docs(*args, **kw)
    merged = {"resources": [r for d in docs.values() for r in d["resources"]]}
    if "version_info" in docs["cds"]:
        merged = {"version_info": docs["cds"]["version_info"], **merged}
    return atomic_write(path, yaml.safe_dump(merged, sort_keys=False))


def atomic_write(path: Path, text: str) -> Path:
    """Save the way many editors do: write a temporary file, then rename it over the original."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path



def curl(port: int, timeout: float = 10.0, expect: str | None = None) -> str:
    """GET / through Envoy's listener until it answers (and mentions ``expect``)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/", timeout=2, trust_env=False)
            last = f"{r.status_code} {r.text[:200]}"
            if r.status_code == 200 and (expect is None or expect in r.text):
                return r.text
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(0.02)
    raise AssertionError(f"no answer{' with ' + expect if expect else ''} through :{port}; last: {last}")


def cluster_version(envoy: Envoy) -> str | None:
    configs = envoy.admin.config_dump(resource="dynamic_active_clusters")["configs"]
    return next((c.get("version_info") for c in configs if c["cluster"]["name"] == "example_proxy_cluster"), None)


def wait_cluster_version(envoy: Envoy, version: str, timeout: float = 10.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if cluster_version(envoy) == version:
            return time.monotonic() - start
        time.sleep(0.002)
    raise AssertionError(f"Envoy still has cluster version {cluster_version(envoy)!r}, not {version!r}")
