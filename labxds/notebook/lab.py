"""The lab a learner holds in a notebook: the runtime, with what it shows as tables.

``labxds.Lab`` is this class. The runtime below (:class:`labxds.lab.LabRuntime`) starts the
processes and returns plain records; this layer adds pandas, so the layers under it never need
it. The table methods return DataFrames a notebook displays as tables; ``curl_i`` and
``config_dump`` give the sandbox's raw views, ``topology`` and ``sequence`` draw pictures, and
``mark`` notes a moment so that ``sequence(since=...)`` draws one step's conversation.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..lab.runtime import LabRuntime
from ..lab.traffic import send
from . import tables

if TYPE_CHECKING:
    import pandas as pd

    from .diagrams import Diagram
    from .raw import JsonText, RawResponse

__all__ = ["Lab"]


class Lab(LabRuntime):
    """Control plane + Envoy + echo services, with the sandbox's ports by default.

    ``Lab().start()`` twice returns the same running lab, so re-running a notebook cell is safe.
    """

    def curl(self, n: int = 1, path: str = "/", **kwargs: Any) -> pd.DataFrame:
        """``n`` requests through Envoy's listener, one row each (failures are rows too)."""
        return tables.lab_table(tables.requests_frame(self.number_instances(send(self.listener_url, n, path=path, **kwargs))))

    def clusters(self, *, warming: bool = False) -> pd.DataFrame:
        """The clusters Envoy accepted over CDS (``/config_dump``'s dynamic_active_clusters); with
        ``warming``, also those still waiting for their endpoints (dynamic_warming_clusters)."""
        return tables.lab_table(tables.clusters_table(self.admin, include_warming=warming))

    def endpoints_table(self, cluster: str | None = None) -> pd.DataFrame:
        return tables.lab_table(tables.endpoints_table(self.admin, cluster))

    def listeners(self) -> pd.DataFrame:
        return tables.lab_table(tables.listeners_table(self.admin))

    def routes(self) -> pd.DataFrame:
        return tables.lab_table(tables.routes_table(self.admin))

    def sandbox_endpoint(self) -> str | None:
        """The sandbox's one query: the first endpoint of the first dynamic active cluster."""
        return tables.sandbox_endpoint(self.admin)  # type: ignore[return-value]

    def hosts(self, cluster: str | None = None) -> pd.DataFrame:
        """Each upstream host as Envoy sees it now (``/clusters``): health in words (ejected,
        failed health check), requests, successes, errors."""
        return tables.lab_table(tables.hosts_table(self.admin, cluster))

    def certificates(self) -> pd.DataFrame:
        """The certificates Envoy holds (``/certs``): serial, names, expiry."""
        return tables.lab_table(tables.certificates_table(self.admin))

    def stats(self, filter: str | None = None) -> pd.DataFrame:
        return tables.lab_table(tables.stats_table(self.admin, filter))

    def status(self) -> pd.DataFrame:
        """Per type: versions sent, ACKed and NACKed by this lab's Envoy, with its last error."""
        return tables.lab_table(tables.status_table(self.cp))

    def trace(self, last: int | None = None, *, node: str | None = None) -> pd.DataFrame:
        """The xDS conversation with this lab's Envoy: requests, responses, nonces, ACKs and NACKs."""
        return tables.lab_table(tables.trace_table(self.cp, node or self.node_id, last))

    def where(self) -> pd.DataFrame:  # type: ignore[override,unused-ignore]  # the same rows, as a table
        """What runs where, as a table."""
        import pandas as pd

        return tables.lab_table(pd.DataFrame(super().where(), columns=["component", "address", "detail"]))

    # -- the sandbox's raw views and pictures ---------------------------------------------------

    def curl_i(self, path: str = "/", **kwargs: Any) -> RawResponse:
        """``curl -i`` through Envoy's listener: status line, Envoy's headers, body."""
        from .raw import curl_i

        return curl_i(self, path, **kwargs)

    def config_dump(self, resource: str | None = None, *, include_eds: bool = False) -> JsonText:
        """Envoy's ``/config_dump`` as raw JSON (a dict that prints as indented JSON)."""
        from .raw import config_dump

        return config_dump(self, resource, include_eds=include_eds)

    def mark(self) -> float:
        """Now, as a point in the trace: ``lab.sequence(since=mark)`` draws what came after."""
        return time.time()

    def topology(self) -> Diagram:
        """A picture of the lab: processes, ports, and who connects to whom, as they are now."""
        from .diagrams import topology

        return topology(self)

    def sequence(self, since: float | None = None, *, last: int = 30, title: str | None = None) -> Diagram:
        """A sequence diagram of the xDS conversation with this lab's Envoy (since a ``mark``)."""
        from .diagrams import sequence

        return sequence(self, since, last=last, title=title)
