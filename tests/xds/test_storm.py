"""Many streams at once: a reconnect storm is queued, not refused; past max_streams, a refusal
that says why (issue 17; bench/storm.py measures 5,000 over 50 connections)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from xds_client import ADS, CLUSTER, SotwClient, StreamEnded

from labxds import ControlPlane, Snapshot
from labxds.xds import cluster


def _snapshot() -> Snapshot:
    return Snapshot([cluster("c0", [("127.0.0.1", 1)], type="STATIC")])


def test_a_stream_past_max_streams_is_refused_with_the_reason():
    with ControlPlane(port=0, max_streams=2) as cp:
        cp.set_snapshot(_snapshot())
        a, b = SotwClient(cp.address, "a"), SotwClient(cp.address, "b")
        try:
            a.subscribe(CLUSTER)
            b.subscribe(CLUSTER)
            with SotwClient(cp.address, "c") as c:
                c.send(CLUSTER)
                with pytest.raises(StreamEnded) as info:
                    c.recv()
            assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "holds at most 2 streams and has 2 open" in info.value.details
        finally:
            a.close()
            b.close()


def test_a_burst_of_streams_past_grpcs_pending_call_limit_all_open():
    """A burst of new streams while the server is busy: all are queued and answered. The bounded
    version of bench/storm.py, where 5,000 at once lost 334 to 1,141 streams to gRPC's limit on
    calls not yet picked up by the server (1,000 at random, 3,000 always: "INTERNAL: Internal
    error from Core" at the client); here, 1,500 did not trip it even with the old limits, so
    this test guards the burst, the benchmark the limit."""
    n, connections = 1500, 15

    async def storm(cp: ControlPlane) -> tuple[int, list[str]]:
        channels = [grpc.aio.insecure_channel(cp.address, options=[("grpc.test_channel", i)]) for i in range(connections)]
        for ch in channels:
            await ch.channel_ready()
        # The server's loop busy for a moment, as after a restart: every call waits in gRPC's queue.
        cp._loop.call_soon_threadsafe(time.sleep, 1.5)
        failures: list[str] = []
        calls = []

        async def one(i: int) -> bool:
            call = channels[i % connections].stream_stream(
                ADS + "StreamAggregatedResources", request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                response_deserializer=discovery_pb2.DiscoveryResponse.FromString)()
            calls.append(call)
            try:
                await call.write(discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id=f"storm-{i}"), type_url=CLUSTER))
                return (await call.read()) is not grpc.aio.EOF
            except grpc.aio.AioRpcError as exc:
                failures.append(f"{exc.code()}: {exc.details()}")
                return False

        results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), 60)
        for call in calls:
            call.cancel()
        for ch in channels:
            await ch.close(None)
        return sum(results), failures

    with ControlPlane(port=0) as cp:
        cp.set_snapshot(_snapshot())
        opened, failures = asyncio.run(storm(cp))
    assert (opened, failures[:3]) == (n, [])
