"""Background folds: a handler's ``Aggregator.update(batch.records)`` may fold on another thread.

Whatever the timing (the thread folds it, or the table takes it back), every
call after ``update`` must see the fold done, results must equal folding in the
call, a table dropped, copied or forked with a fold pending must stay sound,
and every fold handed over must be accounted for. Only the records the
framework hands a handler fold this way (``fold`` below marks them so); a
user's own records fold in the call.
"""

from __future__ import annotations

import gc
import math
import os
import threading
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streamcore as sc
from streamcore import _aggregate
from streamcore.aggregate import Aggregator, handing
from streamcore.windows import state_nbytes

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs Linux")


@pytest.fixture(autouse=True)
def background_on() -> Iterator[None]:
    previous = _aggregate.background_folds(True)
    yield
    _aggregate.background_folds(previous)


def fold(agg: Aggregator, records: pa.RecordBatch) -> None:
    """``agg.update(records)`` as a handler's update of its ``batch.records``."""
    with handing(records):
        agg.update(records)


def spec() -> Aggregator:
    return Aggregator(by=["user"], sum=["value"], min=["value"], max=["value"], mean=["value"])


def batch(users: list[Any], values: list[float | None]) -> pa.RecordBatch:
    return pa.record_batch({"user": pa.array(users, pa.utf8()), "value": pa.array(values, pa.float64())})


def rows(agg: Aggregator) -> list[dict[str, Any]]:
    """The result as rows; NaN made comparable."""
    out = agg.result().to_pylist()
    for row in out:
        for key, value in row.items():
            if isinstance(value, float) and math.isnan(value):
                row[key] = "nan"
    return out


user_ids = st.one_of(st.none(), st.sampled_from([f"u{i}" for i in range(40)]), st.text(max_size=20))
values = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=False, width=64))
batches = st.lists(
    st.lists(st.tuples(user_ids, values), max_size=60).map(
        lambda pairs: batch([u for u, _ in pairs], [v for _, v in pairs])
    ),
    max_size=8,
)
steps = st.lists(st.sampled_from(["update", "copy", "drop_copy", "merge", "len", "nbytes"]), max_size=30)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=batches, steps=steps)
def test_background_and_inline_folds_give_the_same_results(
    batches: list[pa.RecordBatch], steps: list[str]
) -> None:
    def run() -> tuple[list[Any], list[Any]]:
        agg = spec()
        side = spec()
        seen: list[Any] = []
        copies: list[Aggregator] = []
        for i, step in enumerate(steps):
            records = batches[i % len(batches)] if batches else batch([], [])
            if step == "update":
                fold(agg, records)
                fold(side, records)
            elif step == "copy":
                copies.append(agg)
                agg = agg.copy()  # the old one stays alive: a stale copy, updated below
            elif step == "drop_copy" and copies:
                fold(copies.pop(), records)  # a fold queued on a table about to be dropped
            elif step == "merge":
                agg.merge(side)
            elif step == "len":
                seen.append(len(agg))
            else:
                seen.append(agg.nbytes)
        return rows(agg), seen + [rows(c) for c in copies]

    _aggregate.background_folds(False)
    expected = run()
    _aggregate.background_folds(True)
    assert run() == expected


def test_every_fold_handed_over_is_run_once() -> None:
    aggs = [spec() for _ in range(50)]
    records = batch([f"u{i % 37}" for i in range(500)], [float(i) for i in range(500)])
    posted, ran, taken_back = _aggregate.background_stats()
    for _ in range(4):
        for agg in aggs:
            fold(agg, records)
    for agg in aggs:
        assert len(agg) == 37
        assert agg.result()["count"].to_pylist() == [4 * len(range(g, 500, 37)) for g in range(37)]
    posted2, ran2, taken_back2 = _aggregate.background_stats()
    assert posted2 > posted  # a full queue folds in the call
    assert (ran2 - ran) + (taken_back2 - taken_back) == posted2 - posted


def test_inline_folds_when_turned_off() -> None:
    _aggregate.background_folds(False)
    before = _aggregate.background_stats()
    agg = spec()
    fold(agg, batch(["a", "b", "a"], [1.0, 2.0, 3.0]))
    assert _aggregate.background_stats() == before
    assert agg.result()["value_sum"].to_pylist() == [4.0, 2.0]
    assert _aggregate.background_folds(True) is False


def test_large_batches_fold_in_the_call() -> None:
    before = _aggregate.background_stats()
    agg = Aggregator(by=["user"])
    fold(agg, batch([f"u{i % 1000}" for i in range(1 << 16)], [0.0] * (1 << 16)))
    assert _aggregate.background_stats() == before
    assert len(agg) == 1000


def test_dropping_tables_with_folds_pending() -> None:
    original = spec()
    fold(original, batch(["a", "b"], [1.0, 2.0]))
    expected = rows(original)
    records = batch([f"k{i}" for i in range(3000)], [1.0] * 3000)
    for _ in range(200):
        twin = original.copy()
        fold(twin, records)  # its fold appends to blocks the original shares
        del twin
    gc.collect()
    assert rows(original) == expected
    again = original.copy()
    fold(again, records)
    assert len(again) == 3002


def test_copies_and_results_wait_for_the_fold() -> None:
    agg = spec()
    for i in range(100):
        fold(agg, batch([f"u{i}", f"u{i + 1}"], [1.0, 1.0]))
        twin = agg.copy()
        assert len(twin) == i + 2
        agg = twin
    assert agg.result()["count"].to_pylist() == [1] + [2] * 99 + [1]


def test_size_bound_is_never_below_the_size() -> None:
    agg = spec()
    for i in range(50):
        fold(agg, batch([f"user-{i}-{j}" for j in range(100)], [1.0] * 100))
        bound = agg._nbytes_bound()
        exact = agg.nbytes
        assert exact <= bound
        assert agg._nbytes_bound() == exact  # the fold is seen done: no bound any more


def test_window_state_limit_decides_on_the_exact_size() -> None:
    # A bound may stand in for the size only when it keeps within the limit.
    for i in range(30):
        agg = spec()
        fold(agg, batch([f"u{j}" for j in range(i * 10)], [1.0] * (i * 10)))
        twin = agg.copy()
        fold(twin, batch([f"v{j}" for j in range(500)], [1.0] * 500))
        state = {"agg": twin, "n": i}
        exact = state_nbytes(state)
        assert state_nbytes(state, exact) <= exact
        assert state_nbytes(state, exact - 1) > exact - 1


def test_threads_with_their_own_aggregators() -> None:
    records = [
        batch([f"u{(i * 7 + j) % 301}" for j in range(400)], [float(j) for j in range(400)]) for i in range(5)
    ]

    def work(out: list[list[Any]]) -> None:
        aggs = [spec() for _ in range(20)]
        for _ in range(3):
            for k, agg in enumerate(aggs):
                fold(agg, records[k % 5])
                aggs[k] = agg.copy()
        out.extend(rows(a) for a in aggs)

    _aggregate.background_folds(False)
    expected: list[list[Any]] = []
    work(expected)
    _aggregate.background_folds(True)
    results: list[list[list[Any]]] = [[] for _ in range(4)]
    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for out in results:
        assert out == expected


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_with_folds_pending() -> None:
    aggs = [spec() for _ in range(30)]
    records = batch([f"u{i % 250}" for i in range(2000)], [1.0] * 2000)
    for agg in aggs:
        fold(agg, records)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its tables must have no fold pending, and new folds work
        try:
            sizes = [len(a) for a in aggs]
            fold(aggs[0], batch(["new"], [1.0]))
            sizes.append(len(aggs[0]))
            os.write(write, repr(sizes).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    assert child == repr([250] * 30 + [251])
    assert [len(a) for a in aggs] == [250] * 30


def test_a_users_own_records_fold_in_the_call() -> None:
    before = _aggregate.background_stats()
    agg = spec()
    records = batch(["a", "b", "a"], [1.0, 2.0, 3.0])
    agg.update(records)
    with handing(batch(["x"], [0.0])):  # other records than the ones handed over
        agg.update(records)
    assert _aggregate.background_stats() == before
    assert agg.result()["value_sum"].to_pylist() == [8.0, 4.0]


def test_a_window_handler_folds_in_the_background() -> None:
    clock = sc.VirtualClock(start=0.0)
    stream = sc.MemoryStream(shards=2, clock=clock)
    for minute in range(3):
        clock.advance_to(60.0 * minute)
        stream.put(pa.table({"user": [f"u{i % 30}" for i in range(500)], "value": [1.0] * 500}), key="user")
    totals: list[int] = []

    def handler(batch: sc.Batch) -> None:
        agg = batch.state.setdefault("agg", Aggregator(by="user", sum="value"))
        if batch.is_final:
            totals.append(int(sum(agg.result()["count"].to_pylist())))
        else:
            agg.update(batch.records)

    before = _aggregate.background_stats()
    with sc.App(clock=clock, concurrency=1) as app:
        app.consumer(stream, batch_size=100, tumbling_window=60)(handler)
        app.run(until_idle=True)
    queued, ran, taken_back = (b - a for a, b in zip(before, _aggregate.background_stats(), strict=True))
    assert sum(totals) >= 1000  # the last window may still be open
    assert queued > 0 and ran + taken_back == queued


def test_copies_fold_into_blocks_they_share() -> None:
    # A copy's fold replaces the blocks it shares (accumulators) or must grow (keys,
    # arena) with new ones that the fold fills from the shared ones: the original
    # keeps its groups, every copy gets its own, whether its fold ran on the thread,
    # was taken back by a later call, or was dropped with the copy.
    _aggregate.background_folds(False)
    original = spec()
    fold(original, batch([f"u{i}" for i in range(300)], [float(i) for i in range(300)]))
    expected_original = rows(original)
    grown = batch([f"u{i}" for i in range(0, 900, 2)], [1.0] * 450)
    same = batch([f"u{i}" for i in range(0, 300, 3)], [None, 2.0] * 50)
    expected = []
    for records in (grown, same):
        twin = original.copy()
        fold(twin, records)
        expected.append(rows(twin))
    _aggregate.background_folds(True)
    for _ in range(5):
        copies = [(original.copy(), k % 2) for k in range(60)]
        for twin, k in copies:
            fold(twin, (grown, same)[k])
        # Read back to front: the last posted are likeliest still queued (taken back).
        for twin, k in reversed(copies[::2]):
            assert rows(twin) == expected[k]
        del copies, twin  # the rest dropped, folds pending or not
        gc.collect()
        assert rows(original) == expected_original


def test_a_copy_of_a_copy_with_a_fold_pending() -> None:
    agg = spec()
    fold(agg, batch(["a", "b"], [1.0, 2.0]))
    twin = agg.copy()
    fold(twin, batch(["a", "c"], [3.0, None]))
    third = twin.copy()  # waits for twin's fold, then shares its new blocks
    fold(third, batch(["d"], [4.0]))
    fold(twin, batch(["a"], [5.0]))
    assert [r["user"] for r in rows(third)] == ["a", "b", "c", "d"]
    assert rows(twin)[0]["value_sum"] == 9.0 and len(twin) == 3
    assert rows(agg) == [
        {"user": "a", "count": 1, "value_sum": 1.0, "value_min": 1.0, "value_max": 1.0, "value_mean": 1.0},
        {"user": "b", "count": 1, "value_sum": 2.0, "value_min": 2.0, "value_max": 2.0, "value_mean": 2.0},
    ]
