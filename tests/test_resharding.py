"""Resharding: ``split_shard`` / ``merge_shards`` and the parent-before-child rule (SEMANTICS 0.6).

A child shard starts only after each parent is read to its end and
checkpointed there; a parent's open tumbling window closes at its end. So
records of one key stay in order across a reshard, and nothing is lost.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streamcore as sc
from streamcore.durable import CorruptFileError


class Log:
    """Every invocation in the order the handler saw them (handlers may run on several threads)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, list[str], list[int], bool]] = []  # shard, keys, values, final
        self._lock = threading.Lock()

    def __call__(self, batch: sc.Batch) -> None:
        with self._lock:
            self.calls.append(
                (
                    batch.shard,
                    batch.records.column("key").to_pylist(),
                    batch.records.column("n").to_pylist(),
                    batch.is_final,
                )
            )

    def values(self) -> list[int]:
        return [v for _, _, values, _ in self.calls for v in values]

    def per_key(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for _, keys, values, _ in self.calls:
            for key, value in zip(keys, values, strict=True):
                out.setdefault(key, []).append(value)
        return out

    def positions(self, shard: int) -> list[int]:
        return [i for i, call in enumerate(self.calls) if call[0] == shard]


def put(stream: sc.MemoryStream, first: int, n: int, keys: int = 20) -> None:
    """Records ``n = first .. first + n - 1``, keyed ``k0 .. k{keys-1}`` round robin."""
    stream.put([{"key": f"k{i % keys}", "n": i} for i in range(first, first + n)])


def run(stream: sc.MemoryStream, handler: Any, clock: sc.VirtualClock, **options: Any) -> sc.App:
    app = sc.App(clock=clock)
    app.consumer(stream, name="c", **options)(handler)
    app.run(until_idle=True)
    return app


def test_split_shard_makes_two_children_over_the_parent_range() -> None:
    stream = sc.MemoryStream(shards=2)
    parent = stream.shard_log(0)
    low, high = stream.split_shard(0)
    assert (low, high) == (2, 3)
    assert stream.shard_ids == [2, 3, 1]  # open shards in hash-range order
    assert stream.all_shard_ids == [0, 1, 2, 3]
    assert parent.closed and parent.children == (2, 3)
    a, b = stream.shard_log(2), stream.shard_log(3)
    assert a.parents == b.parents == (0,)
    assert (a.range_start, a.range_end, b.range_end) == (parent.range_start, b.range_start, parent.range_end)
    assert a.range_start < b.range_start < a.range_start + (1 << 63)


def test_merge_shards_makes_one_child_over_both_ranges() -> None:
    stream = sc.MemoryStream(shards=3)
    child = stream.merge_shards(2, 1)  # either order; the ranges must touch
    assert stream.shard_ids == [0, child]
    log = stream.shard_log(child)
    assert log.parents == (1, 2)
    assert (log.range_start, log.range_end) == (stream.shard_log(1).range_start, 1 << 64)
    assert stream.shard_log(1).closed and stream.shard_log(2).children == (child,)


def test_bad_reshards_are_refused() -> None:
    stream = sc.MemoryStream(shards=3)
    with pytest.raises(ValueError, match="not adjacent"):
        stream.merge_shards(0, 2)
    with pytest.raises(ValueError, match="no shard 7"):
        stream.split_shard(7)
    with pytest.raises(ValueError, match="inside"):
        stream.split_shard(0, at=stream.shard_log(0).range_start)
    stream.split_shard(0)
    with pytest.raises(ValueError, match="closed"):
        stream.split_shard(0)
    with pytest.raises(ValueError, match="closed"):
        stream.merge_shards(0, 1)
    with pytest.raises(ValueError, match="itself"):
        stream.merge_shards(1, 1)


def test_puts_after_a_split_go_to_the_children_and_keep_key_order() -> None:
    clock = sc.VirtualClock()
    stream = sc.MemoryStream(shards=1, clock=clock)
    put(stream, 0, 300)
    stream.split_shard(0)
    put(stream, 300, 300)
    assert len(stream.shard_log(0)) == 300
    assert len(stream.shard_log(1)) + len(stream.shard_log(2)) == 300
    log = Log()
    with run(stream, log, clock, batch_size=50) as app:
        assert app.metrics()["records_done"] == 600
    assert sorted(log.values()) == list(range(600))
    for values in log.per_key().values():
        assert values == sorted(values)
    last_parent = max(log.positions(0))
    assert min(log.positions(1) + log.positions(2)) > last_parent


def test_children_wait_for_every_parent_of_a_merge() -> None:
    clock = sc.VirtualClock()
    stream = sc.MemoryStream(shards=2, clock=clock)
    put(stream, 0, 400)
    child = stream.merge_shards(0, 1)
    put(stream, 400, 100)
    log = Log()
    run(stream, log, clock, batch_size=10, parallelization=2).close()
    assert sorted(log.values()) == list(range(500))
    assert min(log.positions(child)) > max(log.positions(0) + log.positions(1))
    for values in log.per_key().values():
        assert values == sorted(values)


def test_a_consumer_running_during_the_reshard_finds_the_children() -> None:
    clock = sc.VirtualClock()
    stream = sc.MemoryStream(shards=2, clock=clock)
    log = Log()
    with sc.App(clock=clock) as app:
        app.consumer(stream, name="c", batch_size=25)(log)
        put(stream, 0, 100)
        app.run(until_idle=True)
        low, high = stream.split_shard(1)
        put(stream, 100, 100)
        app.run(until_idle=True)
        assert app.metrics()["records_done"] == 200
        assert set(app.checkpoints()["c"]) == {0, 1, low, high}
    assert sorted(log.values()) == list(range(200))
    assert log.positions(low) or log.positions(high)


def test_a_parent_window_closes_at_its_end_before_the_children_start() -> None:
    clock = sc.VirtualClock(start=1_000.0)
    stream = sc.MemoryStream(shards=1, clock=clock)
    put(stream, 0, 30)
    low, high = stream.split_shard(0)
    put(stream, 30, 30)
    log = Log()
    run(stream, log, clock, batch_size=100, tumbling_window=60).close()
    parent = log.positions(0)
    assert [log.calls[i][3] for i in parent] == [False, True]  # records, then the early close
    assert min(log.positions(low) + log.positions(high)) > parent[-1]
    assert sorted(log.values()) == list(range(60))


def test_a_restart_resumes_in_the_children_without_reading_the_parent_again() -> None:
    clock = sc.VirtualClock()
    stream = sc.MemoryStream(shards=1, clock=clock)
    store = sc.MemoryCheckpoints()
    put(stream, 0, 100)
    stream.split_shard(0)
    put(stream, 100, 100)
    first = Log()
    with sc.App(store, clock=clock) as app:
        app.consumer(stream, name="c", batch_size=10)(first)
        app.run(until_idle=True)
    put(stream, 200, 50)
    second = Log()
    with sc.App(store, clock=clock) as app:
        app.consumer(stream, name="c", batch_size=10)(second)
        app.run(until_idle=True)
    assert sorted(first.values()) == list(range(200))
    assert sorted(second.values()) == list(range(200, 250))
    assert not second.positions(0)


def test_a_new_consumer_at_latest_reads_only_new_records_after_a_reshard() -> None:
    clock = sc.VirtualClock()
    stream = sc.MemoryStream(shards=1, clock=clock)
    put(stream, 0, 50)
    stream.split_shard(0)
    put(stream, 50, 50)
    log = Log()
    with sc.App(clock=clock) as app:
        app.consumer(stream, name="c", starting_position="LATEST")(log)
        app.run(until_idle=True)
        assert log.values() == []
        put(stream, 100, 10)
        app.run(until_idle=True)
    assert sorted(log.values()) == list(range(100, 110))


# --- properties ---------------------------------------------------------------------


reshard_steps = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(1, 60)),
        st.tuples(st.just("split"), st.integers(0, 1000)),
        st.tuples(st.just("merge"), st.integers(0, 1000)),
        st.tuples(st.just("run"), st.just(0)),
    ),
    max_size=14,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shards=st.integers(1, 4),
    steps=reshard_steps,
    batch_size=st.integers(1, 40),
    lanes=st.integers(1, 3),
    keys=st.integers(1, 12),
)
def test_any_reshard_sequence_loses_nothing_and_keeps_key_order(
    shards: int, steps: list[tuple[str, int]], batch_size: int, lanes: int, keys: int
) -> None:
    clock = sc.VirtualClock()
    stream = sc.MemoryStream(shards=shards, clock=clock)
    log = Log()
    written = 0
    with sc.App(clock=clock) as app:
        app.consumer(stream, name="c", batch_size=batch_size, parallelization=lanes)(log)
        for op, arg in steps:
            open_ids = stream.shard_ids
            if op == "put":
                put(stream, written, arg, keys)
                written += arg
            elif op == "split":
                stream.split_shard(open_ids[arg % len(open_ids)])
            elif op == "merge" and len(open_ids) > 1:
                i = arg % (len(open_ids) - 1)
                stream.merge_shards(open_ids[i], open_ids[i + 1])
            elif op == "run":
                app.run(until_idle=True)
        app.run(until_idle=True)
        assert app.metrics()["records_done"] == written
    assert sorted(log.values()) == list(range(written))  # each exactly once: no failures here
    for values in log.per_key().values():
        assert values == sorted(values)
    for shard_id in stream.all_shard_ids:  # a child's first batch after each parent's last
        mine = log.positions(shard_id)
        for parent in stream.shard_log(shard_id).parents:
            theirs = log.positions(parent)
            if mine and theirs:
                assert min(mine) > max(theirs)


# --- LocalLog -----------------------------------------------------------------------


def test_locallog_persists_the_reshard(tmp_path: Path) -> None:
    clock = sc.VirtualClock()
    with sc.LocalLog(tmp_path / "log", shards=2, clock=clock) as stream:
        put(stream, 0, 100)
        low, high = stream.split_shard(0)
        put(stream, 100, 100)
        merged = stream.merge_shards(high, 1)
        put(stream, 200, 100)
        layout = {
            i: (stream.shard_log(i).range_start, stream.shard_log(i).parents)
            for i in stream.all_shard_ids
        }
        open_ids = stream.shard_ids
    with sc.LocalLog(tmp_path / "log", clock=clock) as stream:
        assert stream.shard_ids == open_ids == [low, merged]
        again = {
            i: (stream.shard_log(i).range_start, stream.shard_log(i).parents) for i in stream.all_shard_ids
        }
        assert again == layout
        assert stream.shard_log(0).closed and not stream.shard_log(low).closed
        with pytest.raises(ValueError, match="closed"):
            stream.split_shard(1)
        put(stream, 300, 20)
        log = Log()
        run(stream, log, clock, batch_size=30).close()
    assert sorted(log.values()) == list(range(320))
    for values in log.per_key().values():
        assert values == sorted(values)


def test_puts_route_by_the_open_shards_ranges() -> None:
    stream = sc.MemoryStream(shards=1)
    low, high = stream.split_shard(0, at=1 << 63)
    out = stream.put(pa.table({"key": [f"k{i}" for i in range(200)], "n": list(range(200))}))
    shards = out.column("shard").to_pylist()
    assert set(shards) == {low, high}


def test_locallog_refuses_a_layout_whose_open_shards_leave_a_gap(tmp_path: Path) -> None:
    with sc.LocalLog(tmp_path / "log", shards=2) as stream:
        stream.split_shard(0)
    meta_path = tmp_path / "log" / "streamcore-log.json"
    meta = json.loads(meta_path.read_text())
    meta["open"] = [m for m in meta["open"] if m != 3]  # shard 3's range is now nobody's
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CorruptFileError, match="hash space"):
        sc.LocalLog(tmp_path / "log")
