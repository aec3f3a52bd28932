"""Sockets without policy: addresses and ports, shared by every layer above."""

from .addresses import free_port, parse_address, port_is_free, reachable

__all__ = ["free_port", "parse_address", "port_is_free", "reachable"]
