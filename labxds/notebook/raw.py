"""The sandbox's own views, before any table: ``curl -i``, raw ``/config_dump`` JSON, ``jq`` paths.

The sandbox runs ``curl -i localhost:10000`` and ``curl -s localhost:19000/config_dump | jq
'.configs[1]...'``. ``curl_i(lab)`` is the first (status line, Envoy's headers such as ``server:
envoy`` and ``x-envoy-upstream-service-time``, body), ``config_dump(lab)`` the JSON itself, and
``jq(dump, path)`` the path; ``run_jq`` asks the real ``jq`` when it is installed, and
``configs_index`` says what each ``configs[i]`` holds. The tables come after, in ``tables``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..envoy import as_admin
from ..envoy.jq import CONFIG_SECTIONS, JqError, configs_index, jq, run_jq
from ..i18n import _
from ..lab.traffic import exchange

__all__ = [
    "CONFIG_SECTIONS",
    "SANDBOX_JQ",
    "JqError",
    "JsonText",
    "RawResponse",
    "config_dump",
    "configs_index",
    "curl_i",
    "jq",
    "json_text",
    "run_jq",
    "show_json",
]

#: The sandbox's query: the first endpoint of the first cluster Envoy got over CDS.
SANDBOX_JQ = (".configs[1].dynamic_active_clusters[0].cluster.load_assignment.endpoints[0]"
              ".lb_endpoints[0].endpoint.address.socket_address")


class RawResponse(dict[str, Any]):
    """One exchange as ``curl -i`` prints it; also a record (status, headers, body, error)."""

    @property
    def text(self) -> str:
        error = str(self["error"] or "")
        if error:
            return f"curl: (7) {error}" if "connect" in error else f"curl: {error}"
        lines = [f"{self['http_version']} {self['status']} {self['reason']}".rstrip()]
        lines += [f"{name}: {value}" for name, value in self["headers"]]
        return "\n".join(lines) + "\n\n" + str(self["body"])

    def header(self, name: str) -> str | None:
        """A response header's value (names compare case-insensitively), None if absent."""
        return next((v for k, v in self["headers"] if k.lower() == name.lower()), None)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return self.text

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text)


def curl_i(lab: Any, path: str = "/", *, headers: Mapping[str, str] | None = None, method: str = "GET",
           timeout: float = 2.0) -> RawResponse:
    """``curl -i`` through the lab's listener (``lab`` may also be a URL or a port)."""
    url = lab if isinstance(lab, (str, int)) else lab.listener_url
    return RawResponse(exchange(url, path, headers=headers, method=method, timeout=timeout))


class JsonText(dict[str, Any]):
    """A JSON document that a notebook shows as indented JSON, the way ``curl | jq .`` prints it."""

    max_lines = 60

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(json_text(self, self.max_lines))


def json_text(data: Any, max_lines: int | None = None) -> str:
    """``data`` as indented JSON, cut after ``max_lines`` lines (None: all of it)."""
    text = json.dumps(data, indent=2, ensure_ascii=False)
    lines = text.splitlines()
    if max_lines is not None and len(lines) > max_lines:
        text = "\n".join(lines[:max_lines]) + "\n... " + _("({n} more lines)").format(n=len(lines) - max_lines)
    return text


def show_json(data: Any, max_lines: int | None = 60) -> None:
    """Print ``data`` as indented JSON, as ``jq .`` would, cut after ``max_lines`` lines."""
    print(json_text(data, max_lines))


def config_dump(lab: Any, resource: str | None = None, *, include_eds: bool = False) -> JsonText:
    """``GET /config_dump`` of the lab's Envoy, as Envoy sends it (``resource`` narrows it to one list)."""
    admin = as_admin(lab)
    return JsonText(admin.config_dump(resource=resource, include_eds=include_eds))
