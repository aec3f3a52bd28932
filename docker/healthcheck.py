"""The images' health check (Docker's HEALTHCHECK): exit 0 healthy, 1 unhealthy, with one line why.

    healthcheck.py URL [--h2-if-listening HOST:PORT]

* ``URL`` must answer an HTTP GET with a 2xx status: the echo service its own port, the control
  plane's container JupyterLab's ``/api`` (the container's main process: the notebooks).
* ``--h2-if-listening HOST:PORT``: the ADS port. It is open only while a lesson runs a lab, so
  a closed port is healthy; an open one must answer an HTTP/2 client preface with the server's
  SETTINGS frame, as every gRPC server does first (a wedged control plane that accepts TCP but
  never speaks is unhealthy).

Standard library only: it runs in the images without labxds's dependencies being imported.
"""

from __future__ import annotations

import socket
import sys
import urllib.error
import urllib.request

TIMEOUT = 2.0
# The HTTP/2 connection preface (RFC 9113, 3.4), then an empty SETTINGS frame: length 0, type 0x4,
# no flags, stream 0.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
SETTINGS = 0x4


def check_http(url: str) -> str | None:
    """None if ``url`` answers 2xx, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:  # noqa: S310 - our own URL
            status = response.status
    except urllib.error.HTTPError as exc:
        return f"{url} answered {exc.code}"
    except (OSError, ValueError) as exc:
        return f"{url}: {getattr(exc, 'reason', exc)}"
    return None if 200 <= status < 300 else f"{url} answered {status}"


def check_h2_if_listening(host: str, port: int) -> str | None:
    """None if nothing listens on host:port, or it speaks HTTP/2 first; else why not."""
    try:
        sock = socket.create_connection((host, port), timeout=TIMEOUT)
    except ConnectionRefusedError:
        return None  # no lesson serves ADS now: nothing to check
    except OSError as exc:
        return f"{host}:{port}: {exc}"
    with sock:
        try:
            sock.sendall(H2_PREFACE)
            header = b""
            while len(header) < 9:
                chunk = sock.recv(9 - len(header))
                if not chunk:
                    return f"{host}:{port} accepted a connection and closed it without an HTTP/2 frame"
                header += chunk
        except socket.timeout:
            return f"{host}:{port} accepts connections but sent no HTTP/2 frame within {TIMEOUT:g}s"
        except OSError as exc:
            return f"{host}:{port}: {exc}"
    if header[3] != SETTINGS:
        return f"{host}:{port} answered frame type {header[3]:#x}, not SETTINGS: not an HTTP/2 (gRPC) server"
    return None


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    problems = [check_http(argv[0])]
    rest = argv[1:]
    while rest:
        option, value, *rest = rest if len(rest) >= 2 else (*rest, "")
        if option != "--h2-if-listening" or ":" not in value:
            print(f"unknown option {option} {value}".strip(), file=sys.stderr)
            return 2
        host, _, port = value.rpartition(":")
        problems.append(check_h2_if_listening(host, int(port)))
    problems = [p for p in problems if p]
    print("; ".join(problems) if problems else "healthy")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
