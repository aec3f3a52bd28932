"""The snapshot cache: per-node snapshots over a default, and precise wake-ups."""

from __future__ import annotations

import threading

from labxds import Snapshot, SnapshotCache, cluster


def _snap(name: str) -> Snapshot:
    return Snapshot([cluster(name, [("127.0.0.1", 1)], type="STATIC")])


def test_empty_cache_has_nothing():
    cache = SnapshotCache()
    assert cache.get("a") is None and cache.default is None and cache.node_ids() == []


def test_default_fallback_and_per_node_override():
    cache = SnapshotCache()
    default, own = _snap("d"), _snap("own")
    cache.set(default)
    assert cache.get("a") is default and cache.get("b") is default
    cache.set(own, "a")
    assert cache.get("a") is own and cache.get("b") is default
    assert cache.node_ids() == ["a"]
    newer = _snap("d2")
    cache.set(newer)
    assert cache.get("a") is own, "a new default must not replace a node's own snapshot"
    assert cache.get("b") is newer


def test_set_several_nodes_at_once():
    cache = SnapshotCache()
    s = _snap("x")
    cache.set(s, ["a", "b"])
    assert cache.get("a") is s and cache.get("b") is s and cache.get("c") is None


def test_setting_one_nodes_snapshot_wakes_only_that_node():
    cache = SnapshotCache()
    woken: list[str] = []
    for node in ("a", "b"):
        cache.watch(node, lambda node=node: woken.append(node))
    assert cache.set(_snap("x"), "a") == ["a"]
    assert woken == ["a"]


def test_setting_the_default_wakes_nodes_without_their_own():
    cache = SnapshotCache()
    woken: list[str] = []
    for node in ("a", "b", "c"):
        cache.watch(node, lambda node=node: woken.append(node))
    cache.set(_snap("own"), "a")
    woken.clear()
    assert sorted(cache.set(_snap("default"))) == ["b", "c"]
    assert sorted(woken) == ["b", "c"]


def test_every_stream_of_a_node_is_woken():
    cache = SnapshotCache()
    calls = []
    cache.watch("a", lambda: calls.append(1))
    cache.watch("a", lambda: calls.append(2))
    cache.set(_snap("x"), "a")
    assert sorted(calls) == [1, 2]


def test_clear_falls_back_to_default_and_wakes():
    cache = SnapshotCache()
    default, own = _snap("d"), _snap("own")
    cache.set(default)
    cache.set(own, "a")
    woken = []
    cache.watch("a", lambda: woken.append("a"))
    cache.clear("a")
    assert cache.get("a") is default and woken == ["a"]
    cache.clear("a")  # nothing of its own any more: no wake-up
    assert woken == ["a"]


def test_unwatch_stops_wakeups():
    cache = SnapshotCache()
    woken = []
    unwatch = cache.watch("a", lambda: woken.append(1))
    unwatch()
    assert cache.set(_snap("x"), "a") == []
    assert woken == []
    unwatch()  # twice is harmless


def test_wakers_run_outside_the_lock():
    # a waker that reads the cache (as a stream does) must not deadlock
    cache = SnapshotCache()
    seen = []
    cache.watch("a", lambda: seen.append(cache.get("a")))
    s = _snap("x")
    t = threading.Thread(target=cache.set, args=(s, "a"))
    t.start()
    t.join(5)
    assert not t.is_alive() and seen == [s]
