"""The events the control plane reports, each with its typed signature, in one place.

Hooks run on the server's event-loop thread, after the event; one that raises is logged and never
breaks a stream. ``ControlPlane.on(event, callback)`` and ``Tracker.on`` take them; each returns
a function that removes the hook.
"""

from __future__ import annotations

from typing import Literal, Protocol, Union

from envoy.service.discovery.v3 import discovery_pb2

__all__ = ["EVENTS", "Event", "Hook", "RequestHook", "ResponseHook", "StreamCloseHook", "StreamOpenHook"]

Event = Literal["stream_open", "stream_close", "request", "response"]
EVENTS: tuple[Event, ...] = ("stream_open", "stream_close", "request", "response")


class StreamOpenHook(Protocol):
    """A node opened a stream (``stream`` numbers the server's streams)."""

    def __call__(self, node_id: str, stream: int, /) -> object: ...


class StreamCloseHook(Protocol):
    """A node's stream ended, whoever ended it."""

    def __call__(self, node_id: str, stream: int, /) -> object: ...


class RequestHook(Protocol):
    """A request arrived: a ``DiscoveryRequest`` (SotW) or a ``DeltaDiscoveryRequest``."""

    def __call__(
        self, node_id: str, request: discovery_pb2.DiscoveryRequest | discovery_pb2.DeltaDiscoveryRequest, /
    ) -> object: ...


class ResponseHook(Protocol):
    """A response went out: its type, version, nonce and the names of the resources it carried."""

    def __call__(self, node_id: str, type_url: str, version: str, nonce: str, resources: list[str], /) -> object: ...


Hook = Union[StreamOpenHook, StreamCloseHook, RequestHook, ResponseHook]
