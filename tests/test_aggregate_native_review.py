"""Review of the Aggregator's native per-invocation path (``_aggregate.AggregatorCore``).

The handed records' fast path (one native call once the stored batch's
binding has adopted the aggregator's plan) checked against pyarrow's
``group_by`` over every key and value type, with a private copy per
invocation and failed invocations dropped; aggregators shared between threads;
copies of subclasses; the window state's native copy and size on odd inputs.
"""

from __future__ import annotations

import copy
import gc
import itertools
import sys
import threading
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_aggregate import assert_identical, assert_same, pyarrow_result, tables
from test_aggregate_background import rows

from streamcore import _aggregate
from streamcore._aggregate import BatchBinding
from streamcore.aggregate import Aggregator, handed, handing
from streamcore.errors import InvalidRecordsError
from streamcore.windows import copy_state, state_nbytes

REVIEW_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(params=[False, True], ids=["inline", "background"])
def background(request: pytest.FixtureRequest) -> Any:
    previous = _aggregate.background_folds(request.param)
    yield request.param
    _aggregate.background_folds(previous)


def as_stored(table: pa.Table, pad: int) -> pa.RecordBatch:
    """``table`` as one stored batch, itself a slice (after ``pad`` rows) of a longer one."""
    pad = min(pad, table.num_rows)
    batches = pa.concat_tables([table.slice(0, pad), table]).combine_chunks().to_batches()
    batch = batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)
    return batch.slice(pad)


@REVIEW_SETTINGS
@given(data=tables(), steps=st.data())
def test_handed_slices_match_pyarrow_with_a_copy_per_invocation(
    background: bool, data: tuple[pa.Table, dict[str, Any]], steps: st.DataObject
) -> None:
    # A window's life on the native path: each invocation copies the committed
    # aggregator, folds its handed slice of the stored batch into the copy, and is
    # committed or (failed) dropped; a failed one is retried with a fresh copy.
    table, agg_spec = data
    stored = as_stored(table, steps.draw(st.integers(0, 3)))
    binding = BatchBinding(stored)
    n = stored.num_rows
    cuts = sorted([*steps.draw(st.lists(st.integers(0, n), max_size=5)), 0, n])
    committed = Aggregator(**agg_spec)
    done: list[pa.Table] = []
    results: list[tuple[Aggregator, pa.Table]] = []
    for a, b in itertools.pairwise(cuts):
        records = stored.slice(a, b - a)
        for attempt in range(steps.draw(st.integers(0, 2)), -1, -1):
            state = copy_state({"agg": committed})
            with handing(records, binding, a):
                state["agg"].update(records)
            if attempt:  # a failed invocation: its copy is dropped, the slice retried
                del state
        committed = state["agg"]
        done.append(pa.Table.from_batches([records]))
        results.append((committed, committed.result()))
        assert state_nbytes({"agg": committed}) == 2 + committed.nbytes
    whole = pa.concat_tables(done) if done else table.slice(0, 0)
    want = pyarrow_result(whole, agg_spec)
    if n:
        assert_same(committed.result(), want, agg_spec["by"], ordered=True, table=whole)
    assert len(committed) == want.num_rows
    # Results taken along the way never changed afterwards.
    for agg, result in results:
        assert_identical(agg.result(), result)


@REVIEW_SETTINGS
@given(data=tables(max_rows=60), steps=st.data())
def test_handed_slices_of_dictionary_keys_match_pyarrow(
    background: bool, data: tuple[pa.Table, dict[str, Any]], steps: st.DataObject
) -> None:
    # Dictionary keys are decoded on the general path; the native path must leave them to it.
    table, agg_spec = data
    encoded = table
    for name in agg_spec["by"]:
        at = encoded.schema.get_field_index(name)
        encoded = encoded.set_column(at, name, encoded[name].dictionary_encode())
    stored = as_stored(encoded, 0)
    binding = BatchBinding(stored)
    agg = Aggregator(**agg_spec)
    n = stored.num_rows
    cuts = sorted([*steps.draw(st.lists(st.integers(0, n), max_size=4)), 0, n])
    for a, b in itertools.pairwise(cuts):
        records = stored.slice(a, b - a)
        agg = agg.copy()
        with handing(records, binding, a):
            agg.update(records)
    if n:
        assert_same(agg.result(), pyarrow_result(table, agg_spec), agg_spec["by"], ordered=True, table=table)


def test_a_stored_batch_matching_by_names_but_not_types_is_refused(background: bool) -> None:
    first = pa.record_batch({"k": pa.array(["a", "b"]), "v": pa.array([1, 2], pa.int64())})
    other = pa.record_batch({"k": pa.array(["a", "b"]), "v": pa.array([1.5, 2.5], pa.float64())})
    agg = Aggregator(by="k", sum="v")
    with handing(first, BatchBinding(first), 0):
        agg.update(first)
    for batch in (other, pa.record_batch({"k": pa.array([1, 2]), "v": pa.array([1, 2], pa.int64())})):
        with handing(batch, BatchBinding(batch), 0), pytest.raises(InvalidRecordsError):
            agg.update(batch)
    # A new aggregator of the same spec takes the types of its own records.
    fresh = Aggregator(by="k", sum="v")
    with handing(other, BatchBinding(other), 0):
        fresh.update(other)
    assert fresh.result().to_pylist() == [
        {"k": "a", "count": 1, "v_sum": 1.5},
        {"k": "b", "count": 1, "v_sum": 2.5},
    ]
    assert agg.result().to_pylist() == [
        {"k": "a", "count": 1, "v_sum": 1},
        {"k": "b", "count": 1, "v_sum": 2},
    ]


@pytest.mark.parametrize("handed_lanes", [4, 2, 0], ids=["native", "mixed", "general"])
def test_threads_sharing_one_aggregator_lose_no_fold(background: bool, handed_lanes: int) -> None:
    # Lanes folding slices into one shared aggregator from its first update on: the
    # native path (handed records) and the general path both bind a new aggregator's
    # table; neither may replace a table another thread bound meanwhile (its folds
    # would be lost: the general path did, in about 2% of these rounds).
    n, threads, rounds = 64, 4, 300
    batch = pa.record_batch(
        {"k": pa.array([f"u{i % 7}" for i in range(n)]), "v": pa.array(range(n), pa.int64())}
    )
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(rounds):
            shared = Aggregator(by="k", sum="v")
            barrier = threading.Barrier(threads)
            errors: list[BaseException] = []

            def lane(
                fast: bool,
                shared: Aggregator = shared,
                barrier: threading.Barrier = barrier,
                errors: list[BaseException] = errors,
            ) -> None:
                try:
                    binding = BatchBinding(batch)
                    barrier.wait()
                    for offset in range(0, n, 8):
                        records = batch.slice(offset, 8)
                        if fast:
                            with handing(records, binding, offset):
                                shared.update(records)
                        else:
                            shared.update(records)
                except BaseException as exc:  # reported below
                    errors.append(exc)

            workers = [threading.Thread(target=lane, args=(i < handed_lanes,)) for i in range(threads)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            assert not errors
            assert sum(shared.result()["count"].to_pylist()) == n * threads
    finally:
        sys.setswitchinterval(previous)


def test_a_thread_that_ends_with_records_handed_leaves_other_threads_alone() -> None:
    batch = pa.record_batch({"k": ["a"], "v": [1]})
    binding = BatchBinding(batch)

    def leave_set() -> None:
        handed.records, handed.source, handed.offset = batch, binding, 0

    thread = threading.Thread(target=leave_set)
    thread.start()
    thread.join()
    assert handed.records is None and handed.source is None and handed.offset == 0
    agg = Aggregator(by="k", sum="v")
    agg.update(batch)  # not handed on this thread: the general path
    assert rows(agg) == [{"k": "a", "count": 1, "v_sum": 1}]


def test_handed_references_are_released() -> None:
    batch = pa.record_batch({"k": ["a"], "v": [1]})
    binding = BatchBinding(batch)
    before = sys.getrefcount(batch), sys.getrefcount(binding)
    for _ in range(100):
        with handing(batch, binding, 0):
            assert handed.records is batch
    assert (sys.getrefcount(batch), sys.getrefcount(binding)) == before


class Tracked(Aggregator):
    """A subclass with its own attributes, as a user might write one."""

    def __init__(self, name: str, **options: Any) -> None:
        super().__init__(**options)
        self.name = name
        self.sizes: list[int] = []

    def update(self, records: Any) -> None:
        self.sizes.append(len(records))
        super().update(records)


class Slotted(Aggregator):
    __slots__ = ("tag",)

    def __init__(self, tag: str, **options: Any) -> None:
        super().__init__(**options)
        self.tag = tag


def test_copies_of_a_subclass_keep_its_attributes() -> None:
    # A copy keeps the subclass; it must keep what the subclass added too (a copy of a
    # subclass instance without its attributes fails in the subclass's own methods:
    # the next window invocation's update raised AttributeError).
    batch = pa.record_batch({"k": ["a", "b"], "v": [1, 2]})
    agg = Tracked("clicks", by="k", sum="v")
    agg.update(batch)
    shallow = [agg.copy(), copy.copy(agg)]
    deep = [copy.deepcopy(agg), copy_state({"agg": agg})["agg"]]
    for twin in shallow + deep:
        assert type(twin) is Tracked and twin.name == "clicks" and twin.sizes == [2]
        assert rows(twin) == rows(agg)
    for twin in shallow:
        assert twin.sizes is agg.sizes  # as copy.copy shares them
    for twin in deep:
        assert twin.sizes is not agg.sizes
        twin.update(batch)  # the subclass's update works on the copy
        assert twin.sizes == [2, 2] and agg.sizes == [2]
    slotted = Slotted("t", by="k")
    for twin in (slotted.copy(), copy.deepcopy(slotted), copy_state({"s": slotted})["s"]):
        assert type(twin) is Slotted and twin.tag == "t"
    # A reference back to the aggregator is one to its deep copy; aliasing in a state kept.
    agg.me = agg  # type: ignore[attr-defined]
    twin = copy.deepcopy(agg)
    assert twin.me is twin  # type: ignore[attr-defined]
    state = copy_state({"a": agg, "b": agg, "l": [agg]})
    assert state["a"] is state["b"] is state["l"][0] is state["a"].me  # type: ignore[attr-defined]
    del agg.me  # type: ignore[attr-defined]
    gc.collect()


def test_a_window_state_of_a_subclass_runs_every_invocation() -> None:
    import streamcore as sc

    clock = sc.VirtualClock(start=0.0)
    stream = sc.MemoryStream(shards=1, clock=clock)
    stream.put(pa.table({"user": [f"u{i % 3}" for i in range(40)], "value": [1.0] * 40}), key="user")
    clock.advance_to(120.0)
    stream.put(pa.table({"user": ["late"], "value": [1.0]}), key="user")
    finals: list[tuple[list[int], int]] = []
    errors: list[str] = []

    def handler(batch: sc.Batch) -> None:
        agg = batch.state.setdefault("agg", Tracked("t", by="user", sum="value"))
        if batch.is_final:
            finals.append((list(agg.sizes), int(sum(agg.result()["count"].to_pylist()))))
            return
        try:
            agg.update(batch.records)
        except Exception as exc:
            errors.append(repr(exc))
            raise

    with sc.App(clock=clock, concurrency=1) as app:
        app.consumer(stream, batch_size=10, tumbling_window=60, max_retries=0)(handler)
        app.run(until_idle=True)
    assert errors == []
    assert finals[0] == ([10, 10, 10, 10], 40)
