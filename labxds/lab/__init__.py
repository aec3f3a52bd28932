"""The lab's processes: the runtime that brings up control plane, Envoy and echo services.

``runtime`` holds :class:`LabRuntime` (plain records out; the notebook layer adds tables),
``echo`` the upstream services (which can be told to fail or slow down), ``traffic`` requests
through Envoy's listener (one by one, or a steady background load), ``grpc_services`` gRPC backends
and a gRPC client steered over xDS, and ``metadata`` what a learner's Envoy announces about itself.
"""

from .echo import Behaviour, EchoFleet, EchoService, format_echo, start_services
from .grpc_services import GrpcEcho, GrpcFleet, XdsGrpcClient
from .metadata import Announcement
from .runtime import LabRuntime, LocalLabOnly, local_lab_only
from .traffic import Traffic, send

__all__ = [
    "Announcement",
    "Behaviour",
    "EchoFleet",
    "EchoService",
    "GrpcEcho",
    "GrpcFleet",
    "LabRuntime",
    "LocalLabOnly",
    "Traffic",
    "XdsGrpcClient",
    "format_echo",
    "local_lab_only",
    "send",
    "start_services",
]
