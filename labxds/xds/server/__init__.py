"""The xDS protocol server: ADS and the per-type services, over State of the World and Delta.

``service`` wires the gRPC services; ``sotw`` and ``delta`` are the two protocol variants, each a
stream state machine; ``stream`` holds what they share.
"""

from .service import PEER_COMMON_NAME, PEER_DNS_NAMES, Authorizer, XdsServer

__all__ = ["PEER_COMMON_NAME", "PEER_DNS_NAMES", "Authorizer", "XdsServer"]
