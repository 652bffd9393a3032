"""The Aggregator's native per-invocation path (``_aggregate.AggregatorCore``).

A windowed handler's calls (``update`` of the handed records, ``copy``,
``len``, ``nbytes``), the handed records' per-thread storage and the window
state's copy and size run natively; they must behave as the general Python
path did: same results, same errors, per-thread isolation, nothing shared that
a failed invocation could change.
"""

from __future__ import annotations

import copy
import threading

import pyarrow as pa
import pytest
from test_aggregate_background import rows

from streamcore import _aggregate
from streamcore._aggregate import BatchBinding
from streamcore.aggregate import Aggregator, handed, handing
from streamcore.errors import InvalidRecordsError
from streamcore.windows import copy_state, encode_state, state_nbytes

FLOAT64 = pa.float64()


def stored(n: int = 12, value_type: pa.DataType = FLOAT64) -> pa.RecordBatch:
    return pa.record_batch(
        {
            "seq": pa.array(range(n), pa.uint64()),
            "user": [f"u{i % 4}" if i % 5 else None for i in range(n)],
            "value": pa.array([float(i) if i % 3 else None for i in range(n)], value_type)
            if pa.types.is_floating(value_type)
            else pa.array([i if i % 3 else None for i in range(n)], value_type),
        }
    )


@pytest.mark.parametrize("background", [False, True])
def test_handed_slices_fold_natively_as_the_general_path_does(background: bool) -> None:
    previous = _aggregate.background_folds(background)
    try:
        batch = stored()
        binding = BatchBinding(batch)
        fast = Aggregator(by="user", sum="value", min="value", mean="value")
        plain = Aggregator(by="user", sum="value", min="value", mean="value")
        for offset, length in [(0, 0), (0, 5), (5, 4), (9, 3)]:
            records = batch.slice(offset, length)
            fast = fast.copy()  # as a window state: a copy per invocation
            with handing(records, binding, offset):
                fast.update(records)
            plain.update(records)
            assert len(fast) == len(plain)
            assert fast.nbytes == plain.nbytes
        assert rows(fast) == rows(plain)
    finally:
        _aggregate.background_folds(previous)


def test_a_new_aggregator_takes_the_types_of_its_records_not_its_specs_last_plan() -> None:
    # The spec's last plan is for float64 values; a new aggregator handed int64 ones
    # must hold int64 (the general path), not take the cached plan.
    Aggregator(by="user", sum="value").update(stored(4))
    batch = stored(6, pa.int64())
    agg = Aggregator(by="user", sum="value")
    with handing(batch, BatchBinding(batch), 0):
        agg.update(batch)
    assert agg._table is not None
    assert agg._table.input_types() == [pa.utf8(), pa.int64()]
    assert agg.result().schema.field("value_sum").type == pa.int64()
    # And a later float64 batch is refused, handed or not.
    floats = stored(3)
    with handing(floats, BatchBinding(floats), 0), pytest.raises(InvalidRecordsError, match="'value'"):
        agg.update(floats)


def test_one_binding_serves_aggregators_of_several_specs_in_turn() -> None:
    batch = stored(20)
    binding = BatchBinding(batch)
    by_user = Aggregator(by="user", sum="value")
    by_seq = Aggregator(by="seq", max="value")
    want_user = Aggregator(by="user", sum="value")
    want_seq = Aggregator(by="seq", max="value")
    for offset in range(0, 20, 4):
        records = batch.slice(offset, 4)
        for agg, want in ((by_user, want_user), (by_seq, want_seq)):
            with handing(records, binding, offset):
                agg.update(records)
            want.update(records)
    assert rows(by_user) == rows(want_user)
    assert rows(by_seq) == rows(want_seq)


def test_a_handed_slice_beyond_its_stored_batch_is_refused() -> None:
    batch = stored(6)
    agg = Aggregator(by="user", sum="value")
    agg.update(batch.slice(0, 0))
    records = batch.slice(2, 4)
    with handing(records, BatchBinding(batch), 3), pytest.raises(ValueError, match="not within"):
        agg.update(records)
    assert len(agg) == 0


def test_handed_values_are_per_thread_and_checked() -> None:
    batch = stored(3)
    binding = BatchBinding(batch)
    seen: list[object] = []
    with handing(batch, binding, 2):
        assert handed.records is batch and handed.source is binding and handed.offset == 2
        thread = threading.Thread(target=lambda: seen.extend([handed.records, handed.source, handed.offset]))
        thread.start()
        thread.join()
    assert seen == [None, None, 0]
    assert handed.records is None and handed.source is None and handed.offset == 0
    with pytest.raises(TypeError, match="BatchBinding"):
        handed.source = batch  # type: ignore[assignment]


def test_copies_are_independent_and_keep_the_subclass() -> None:
    class Tagged(Aggregator):
        __slots__ = ()

    agg = Tagged(by="user", sum="value")
    agg.update(stored(6))
    for twin in (agg.copy(), copy.copy(agg), copy.deepcopy(agg)):
        assert type(twin) is Tagged
        assert rows(twin) == rows(agg)
        twin.update(stored(3))
        assert rows(twin) != rows(agg)
    empty = Aggregator(by="user")
    assert len(empty.copy()) == 0 and empty.copy().nbytes == 0


def test_window_state_copy_and_size_agree_with_their_definitions() -> None:
    a = Aggregator(by="user", sum="value")
    a.update(stored(10))
    b = Aggregator(by="seq", count=True)
    b.update(stored(7))
    state = {"a": a, "b": b, "again": a}
    twin = copy_state(state)
    assert twin["a"] is twin["again"] and twin["a"] is not a and twin["b"] is not b
    assert rows(twin["a"]) == rows(a)
    # Every value an aggregator: 2 ({}) plus their native sizes; a bound within the limit.
    exact = 2 + a.nbytes + b.nbytes + a.nbytes
    assert state_nbytes(state) == exact
    assert state_nbytes(state, 1 << 30) >= exact
    assert state_nbytes(state, 10) == exact
    # Mixed and plain states keep the JSON definition.
    mixed = {"a": a, "n": 3}
    assert state_nbytes(mixed) == len(encode_state({"n": 3})) + a.nbytes
    assert state_nbytes({}) == 2
    assert state_nbytes({"x": [1, 2]}) == len(encode_state({"x": [1, 2]}))
    with pytest.raises(TypeError):
        state_nbytes({"x": object()})
    nested = {"l": [a], "t": a}
    copied = copy_state(nested)
    assert copied["l"][0] is copied["t"] and copied["t"] is not a


def test_a_state_of_a_dict_subclass_is_copied_and_sized_as_a_dict() -> None:
    class State(dict):  # type: ignore[type-arg]
        pass

    agg = Aggregator(by="user", sum="value")
    agg.update(stored(5))
    state = State(agg=agg, n=1)
    twin = copy_state(state)
    assert type(twin) is dict and twin["n"] == 1 and twin["agg"] is not agg
    assert rows(twin["agg"]) == rows(agg)
    assert state_nbytes(State(agg=agg)) == 2 + agg.nbytes
    assert state_nbytes(state) == len(encode_state({"n": 1})) + agg.nbytes
