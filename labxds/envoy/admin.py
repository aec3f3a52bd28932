"""A client of Envoy's admin interface (``/config_dump``, ``/stats``, ``/clusters``, ``/ready``)."""

from __future__ import annotations

from typing import Any

import httpx

# --------------------------------------------------------------------------- admin
#: Sections /config_dump?resource= accepts (the repeated fields of the *ConfigDump messages).
from .errors import EnvoyError

__all__ = ["CONFIG_DUMP_RESOURCES", "EnvoyAdmin", "as_admin"]

CONFIG_DUMP_RESOURCES = frozenset({
    "static_clusters", "dynamic_active_clusters", "dynamic_warming_clusters",
    "static_listeners", "dynamic_listeners",
    "static_route_configs", "dynamic_route_configs",
    "static_scoped_route_configs", "dynamic_scoped_route_configs",
    "static_endpoint_configs", "dynamic_endpoint_configs",
    "static_secrets", "dynamic_active_secrets", "dynamic_warming_secrets",
    "ecds_filters",
})  # fmt: skip


class EnvoyAdmin:
    """Thin client for Envoy's admin interface (local or in docker: only the URL matters)."""

    def __init__(self, url: str | int, *, timeout: float = 5.0) -> None:
        if isinstance(url, int):
            url = f"http://127.0.0.1:{url}"
        self.url = url.rstrip("/")
        # trust_env=False: an HTTP(S)_PROXY in the environment must not capture loopback calls.
        self._client = httpx.Client(base_url=self.url, timeout=timeout, trust_env=False)

    def __repr__(self) -> str:
        return f"EnvoyAdmin({self.url!r})"

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> EnvoyAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, path: str, **params: Any) -> httpx.Response:
        """GET an admin path; flags such as include_eds are passed as `include_eds=True`."""
        query = {k: ("" if v is True else v) for k, v in params.items() if v is not None and v is not False}
        return self._client.get(path if path.startswith("/") else f"/{path}", params=query)

    def _json(self, path: str, **params: Any) -> Any:
        response = self.get(path, **params)
        resource = params.get("resource")
        if path == "/config_dump" and resource and response.status_code == 404:
            if resource in CONFIG_DUMP_RESOURCES:
                # Envoy answers 404 while no subsystem has that section (e.g. no RDS user yet).
                return {"configs": []}
            raise EnvoyError(
                f"/config_dump has no resource {resource!r}; known: {', '.join(sorted(CONFIG_DUMP_RESOURCES))}"
            )
        if response.status_code != 200:
            # e.g. 404 "nonsense not found in config dump" for a mistyped resource name
            raise EnvoyError(
                f"{response.request.url} answered {response.status_code}: {response.text.strip()[:200]}"
            )
        return response.json()

    def state(self) -> str:
        """Server state as /ready reports it: PRE_INITIALIZING, INITIALIZING, LIVE, DRAINING."""
        return self.get("/ready").text.strip()

    def ready(self) -> bool:
        """True once Envoy has finished its initial xDS fetch (/ready answers 200 LIVE)."""
        try:
            return self.get("/ready").status_code == 200
        except httpx.TransportError:
            return False

    def config_dump(self, resource: str | None = None, include_eds: bool = False, mask: str | None = None) -> dict:
        """/config_dump, optionally narrowed to one resource type (e.g. dynamic_active_clusters)."""
        return self._json("/config_dump", resource=resource, include_eds=include_eds, mask=mask)

    def stats(self, filter: str | None = None) -> dict[str, int]:
        """Counters and gauges (not histograms) as name -> value; `filter` is Envoy's regex."""
        data = self._json("/stats", format="json", filter=filter)
        return {
            s["name"]: int(s["value"])
            for s in data.get("stats", [])
            if isinstance(s.get("value"), (int, float))  # text readouts are not counters
        }

    def clusters(self) -> dict:
        """/clusters?format=json: live cluster membership, resolved addresses, health flags."""
        return self._json("/clusters", format="json")

    def listeners(self) -> dict:
        """/listeners?format=json: listener names and the addresses actually bound."""
        return self._json("/listeners", format="json")

    def certs(self) -> dict:
        """/certs: the certificates Envoy holds (listeners', clusters', SDS's), serials and expiry."""
        return self._json("/certs")

    def server_info(self) -> dict:
        return self._json("/server_info")


def as_admin(target: Any) -> EnvoyAdmin:
    """Accept an EnvoyAdmin, an Envoy, an admin URL or an admin port; return an EnvoyAdmin."""
    if isinstance(target, EnvoyAdmin):
        return target
    if isinstance(target, (str, int)):
        return EnvoyAdmin(target)
    admin = getattr(target, "admin", None)
    if isinstance(admin, EnvoyAdmin):
        return admin
    url = getattr(target, "admin_url", None)
    if isinstance(url, str):
        return EnvoyAdmin(url)
    raise TypeError(f"expected an admin URL, port, EnvoyAdmin or Envoy, got {type(target).__name__}")


