"""Slices folded through the binding of the batch they were cut from.

A shard log hands handlers slices of the batches its puts stored; an
Aggregator finds a handed slice's columns in the stored batch's
``BatchBinding`` (once per stored batch) instead of in the slice. Folding a
slice that way must equal folding the slice itself, whatever the offsets,
nulls, key types and background folds, and a binding must refuse what it
cannot stand for.
"""

from __future__ import annotations

import itertools

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_aggregate_background import rows

import streamcore as sc
from streamcore import _aggregate
from streamcore._aggregate import BatchBinding
from streamcore.aggregate import Aggregator, handed, handing
from streamcore.errors import InvalidRecordsError

keys = st.one_of(st.none(), st.sampled_from(["a", "bb", "user-00042", ""]), st.text(max_size=24))
ints = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))
values = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=False, width=64))


@st.composite
def stored_batches(draw: st.DrawFn) -> tuple[pa.RecordBatch, list[tuple[int, int]]]:
    """A stored batch (an unused first column, so key and value columns sit at 1 and up)
    and slices of it, given as (offset, length)."""
    n = draw(st.integers(0, 80))
    batch = pa.record_batch(
        {
            "seq": pa.array(range(n), pa.uint64()),
            "user": pa.array(draw(st.lists(keys, min_size=n, max_size=n)), pa.utf8()),
            "shop": pa.array(draw(st.lists(ints, min_size=n, max_size=n)), pa.int64()),
            "value": pa.array(draw(st.lists(values, min_size=n, max_size=n)), pa.float64()),
        }
    )
    # The stored batch may itself be a slice (a put's batch, cut per shard).
    start = draw(st.integers(0, n))
    batch = batch.slice(start, draw(st.integers(0, n - start)))
    n = batch.num_rows
    cuts = sorted([*draw(st.lists(st.integers(0, n), max_size=6)), 0, n])
    return batch, [(a, b - a) for a, b in itertools.pairwise(cuts)]


@pytest.mark.parametrize("background", [False, True])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stored=stored_batches(), by=st.sampled_from([["user"], ["shop"], ["user", "shop"]]))
def test_a_slice_folded_through_its_stored_batch_equals_the_slice(
    background: bool, stored: tuple[pa.RecordBatch, list[tuple[int, int]]], by: list[str]
) -> None:
    batch, slices = stored
    previous = _aggregate.background_folds(background)
    try:
        through = Aggregator(by=by, count=True, sum=["value"], min=["value"], mean=["value"])
        plain = Aggregator(by=by, count=True, sum=["value"], min=["value"], mean=["value"])
        binding = BatchBinding(batch)
        for offset, length in slices:
            records = batch.slice(offset, length)
            with handing(records, binding, offset):
                through.update(records)
            plain.update(records)
            assert len(through) == len(plain)
        assert rows(through) == rows(plain)
    finally:
        _aggregate.background_folds(previous)


def test_one_binding_serves_tables_of_other_specs_and_types() -> None:
    batch = pa.record_batch(
        {"k": ["x", "y", "x"], "n": pa.array([1, 2, 3], pa.int32()), "v": [1.0, 2.0, 4.0]}
    )
    binding = BatchBinding(batch)
    by_k = Aggregator(by=["k"], sum=["v"])
    by_n = Aggregator(by=["n"], sum=["v"])
    for agg in (by_k, by_n):
        records = batch.slice(1, 2)
        with handing(records, binding, 1):
            agg.update(records)
    assert by_k.result().to_pylist() == [
        {"k": "y", "count": 1, "v_sum": 2.0},
        {"k": "x", "count": 1, "v_sum": 4.0},
    ]
    assert by_n.result().to_pylist() == [
        {"n": 2, "count": 1, "v_sum": 2.0},
        {"n": 3, "count": 1, "v_sum": 4.0},
    ]


def test_a_column_of_another_type_is_refused_as_without_a_binding() -> None:
    first = pa.record_batch({"k": ["x"], "v": [1.0]})
    agg = Aggregator(by=["k"], sum=["v"])
    agg.update(first)  # fixes v as float64
    table = agg._table
    assert table is not None
    batch = pa.record_batch({"k": ["x", "y"], "v": pa.array([1, 2], pa.int64())})
    binding = BatchBinding(batch)
    with pytest.raises(
        InvalidRecordsError, match="column 'v' has type int64, but this aggregator holds double"
    ):
        table.update_batch(batch, [0], [1], False, binding, 0)
    # A binding that found column 1 as int64 for another table refuses it as double too.
    other = Aggregator(by=["k"], sum=["v"])
    other.update(batch.slice(0, 0))  # int64 now
    other_table = other._table
    assert other_table is not None
    other_table.update_batch(batch, [0], [1], False, binding, 0)
    with pytest.raises(InvalidRecordsError, match="has type int64, but this aggregator holds double"):
        table.update_batch(batch, [0], [1], False, binding, 0)
    assert agg.result().to_pylist() == [{"k": "x", "count": 1, "v_sum": 1.0}]


def test_rows_beyond_the_stored_batch_and_bad_indexes_are_refused() -> None:
    batch = pa.record_batch({"k": ["x", "y", "z"], "v": [1.0, 2.0, 3.0]})
    binding = BatchBinding(batch)
    table = Aggregator(by=["k"], sum=["v"])
    table.update(batch.slice(0, 0))
    native = table._table
    assert native is not None
    with pytest.raises(ValueError, match="not within"):
        native.update_batch(batch.slice(1, 2), [0], [1], False, binding, 2)
    with pytest.raises(ValueError, match="not within"):
        native.update_batch(batch.slice(0, 1), [0], [1], False, binding, -1)
    with pytest.raises(ValueError, match="not within"):  # offset + rows would overflow int64
        native.update_batch(batch.slice(0, 1), [0], [1], False, binding, 2**63 - 1)
    with pytest.raises(IndexError, match="out of range"):
        native.update_batch(batch.slice(0, 1), [5], [1], False, binding, 0)
    assert len(table) == 0
    with pytest.raises(TypeError, match="RecordBatch"):
        BatchBinding(pa.table({"k": ["x"]}))  # type: ignore[arg-type]


def test_a_windowed_consumer_folds_through_bindings_and_agrees_with_pyarrow() -> None:
    """End to end: puts of many rows per shard, batches cut from them, each window's
    Aggregator result equal to pyarrow's group_by of the same records."""
    clock = sc.VirtualClock(start=0.0)
    stream = sc.MemoryStream(shards=3, clock=clock)
    users = [f"user-{i * 7919 % 50:05d}" for i in range(3000)]
    table = pa.table({"user": users, "value": [float(i % 13) for i in range(3000)]})
    for start in range(0, 3000, 1000):  # three puts: three stored batches per shard
        stream.put(table.slice(start, 1000), key="user")
    totals: list[pa.Table] = []
    bound: list[bool] = []

    def handler(batch: sc.Batch) -> None:
        assert batch.state is not None
        agg = batch.state.setdefault("agg", Aggregator(by=["user"], sum=["value"]))
        if batch.is_final:
            totals.append(agg.result())
        else:
            # A batch within one stored batch is handed as a slice of it (one that
            # spans two puts' batches is a copy, handed without a source).
            if handed.source is not None:
                bound.append(handed.source.batch.slice(handed.offset, len(batch)).equals(batch.records))
            agg.update(batch.records)

    with sc.App(clock=clock, concurrency=1) as app:
        app.consumer(stream, batch_size=70, tumbling_window=60, max_retries=0)(handler)
        app.run(until_idle=True)
        clock.advance(120)
        app.run(until_idle=True)
        # Every stored batch was read to its end: no shard keeps a binding (which
        # would hold a batch that retention may drop).
        assert all(state.binding is None for state in app._scheduler.consumers[0].shards.values())
    assert len(bound) > 30 and all(bound)
    got = pa.concat_tables(totals).group_by("user").aggregate([("count", "sum"), ("value_sum", "sum")])
    want = table.group_by("user").aggregate([("value", "count"), ("value", "sum")])
    as_dict = {r["user"]: (r["count_sum"], r["value_sum_sum"]) for r in got.to_pylist()}
    assert as_dict == {r["user"]: (r["value_count"], r["value_sum"]) for r in want.to_pylist()}


def test_records_not_handed_fold_without_the_binding() -> None:
    batch = pa.record_batch({"k": ["x", "y"], "v": [1.0, 2.0]})
    other = pa.record_batch({"k": ["z"], "v": [5.0]})
    agg = Aggregator(by=["k"], sum=["v"])
    with handing(batch.slice(0, 1), BatchBinding(batch), 0):
        agg.update(other)  # not the handed records: its own columns count
    assert agg.result().to_pylist() == [{"k": "z", "count": 1, "v_sum": 5.0}]
