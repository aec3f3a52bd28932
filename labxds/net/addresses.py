"""Addresses and ports: where a socket bound to an address is reached, whether a port is free."""

from __future__ import annotations

import ipaddress
import socket

__all__ = ["free_port", "is_loopback", "parse_address", "port_is_free", "reachable"]


def is_loopback(host: str) -> bool:
    """Whether a socket bound to ``host`` is reachable from this machine only (127.0.0.0/8, ::1)."""
    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def reachable(host: str) -> str:
    """The address to reach a socket bound to ``host``: loopback for a wildcard bind."""
    try:
        address = ipaddress.ip_address(host) if host else ipaddress.IPv4Address(0)
    except ValueError:
        return host  # a name
    if address.is_unspecified:
        return "::1" if address.version == 6 else "127.0.0.1"
    return host


def port_is_free(host: str, port: int) -> bool:
    """Whether Envoy could listen on ``host:port`` now.

    Probe as Envoy binds (SO_REUSEADDR, then listen): connections left in TIME_WAIT by an
    Envoy that just stopped do not block a new one, only another listening socket does.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            probe.listen()
        except OSError:
            return False
    return True


def parse_address(address: str, default_port: int = 18000) -> tuple[str, int]:
    """``"HOST:PORT"``, ``"[::1]:PORT"`` or ``"HOST"`` as (host, port)."""
    text = address.strip()
    if "://" in text:
        text = text.split("://", 1)[1].rstrip("/")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"control plane address {address!r} has no host; write HOST:PORT")
    if port and not port.isdigit():
        raise ValueError(f"control plane address {address!r}: {port!r} is not a port number")
    value = int(port) if port else default_port
    if not 0 < value < 65536:
        raise ValueError(f"control plane address {address!r}: port {value} is out of range")
    return host, value


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
