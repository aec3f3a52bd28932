"""The docker compose topology reproduced without Docker (see runner.py for what a run does)."""

from .runner import launch, sandbox_bootstrap
from .spec import ROOT, ServiceSpec, load_services
from .topology import Topology

__all__ = ["ROOT", "ServiceSpec", "Topology", "launch", "load_services", "sandbox_bootstrap"]
