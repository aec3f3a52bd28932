"""The lab's processes: the runtime that brings up control plane, Envoy and echo services.

``runtime`` holds :class:`LabRuntime` (plain records out; the notebook layer adds tables),
``echo`` the upstream services, ``traffic`` requests through Envoy's listener, and ``metadata``
what a learner's Envoy announces about itself.
"""

from .echo import EchoFleet, EchoService, format_echo, start_services
from .metadata import Announcement
from .runtime import LabRuntime, LocalLabOnly, local_lab_only
from .traffic import send

__all__ = [
    "Announcement",
    "EchoFleet",
    "EchoService",
    "LabRuntime",
    "LocalLabOnly",
    "format_echo",
    "local_lab_only",
    "send",
    "start_services",
]
