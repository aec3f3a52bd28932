"""What can go wrong running Envoy, in words a learner can act on."""

from __future__ import annotations

from ..i18n import _

__all__ = ["EnvoyError", "EnvoyExited", "EnvoyNotFound", "EnvoyPortBusy"]

# --------------------------------------------------------------------------- errors


class EnvoyError(RuntimeError):
    """Base class: anything that went wrong running Envoy."""


class EnvoyNotFound(EnvoyError, FileNotFoundError):
    """No Envoy binary: the lab cannot run without one."""


class EnvoyPortBusy(EnvoyError):
    """Another process already listens where this Envoy wants its admin interface."""

    def __init__(self, host: str, port: int, detail: str = "") -> None:
        self.host, self.port = host, port
        msg = _("admin port {port} on {host} is already in use (another Envoy or lab still running?); "
                "stop it or choose another admin_port").format(port=port, host=host)
        super().__init__(msg + (f"\n{detail}" if detail else ""))


class EnvoyExited(EnvoyError):
    """Envoy died before it became usable; carries its exit code and last log lines."""

    def __init__(self, returncode: int | None, log_lines: list[str], what: str = "") -> None:
        self.returncode = returncode
        self.log_lines = log_lines
        head = what or _("Envoy exited during startup with code {code}").format(code=returncode)
        tail = "\n".join(log_lines) if log_lines else _("(no output)")
        super().__init__(_("{what}; Envoy's last log lines:").format(what=head) + "\n" + tail)


