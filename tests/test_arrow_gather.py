"""streamcore._arrow.gather and the put helpers, checked against pyarrow's own kernels."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import warnings
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamcore import _arrow, _hashing

UTC = dt.timezone.utc


def ints(bits: int, signed: bool) -> st.SearchStrategy[int]:
    if signed:
        return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return st.integers(0, 2**bits - 1)


DECIMALS = st.decimals(-(10**6), 10**6, places=2, allow_nan=False, allow_infinity=False)
TIMES = st.datetimes(dt.datetime(1970, 1, 1), dt.datetime(2200, 1, 1))
SHORT_BYTES = st.binary(max_size=40)  # both sides of the 16- and 32-byte copy paths
SHORT_TEXT = st.text(max_size=30)

# Natively gathered types, each with a strategy for its values (None is added).
NATIVE: list[tuple[pa.DataType, st.SearchStrategy[Any]]] = [
    (pa.int8(), ints(8, True)),
    (pa.int16(), ints(16, True)),
    (pa.int32(), ints(32, True)),
    (pa.int64(), ints(64, True)),
    (pa.uint8(), ints(8, False)),
    (pa.uint16(), ints(16, False)),
    (pa.uint32(), ints(32, False)),
    (pa.uint64(), ints(64, False)),
    (pa.float32(), st.floats(width=32, allow_nan=False)),
    (pa.float64(), st.floats(allow_nan=False)),
    (pa.bool_(), st.booleans()),
    (pa.utf8(), SHORT_TEXT),
    (pa.large_utf8(), SHORT_TEXT),
    (pa.binary(), SHORT_BYTES),
    (pa.large_binary(), SHORT_BYTES),
    (pa.binary(3), st.binary(min_size=3, max_size=3)),
    (pa.binary(5), st.binary(min_size=5, max_size=5)),  # an odd width: memcpy per value
    (pa.timestamp("ms", tz="UTC"), TIMES.map(lambda t: t.replace(tzinfo=UTC))),
    (pa.timestamp("us"), TIMES),
    (pa.date32(), st.dates()),
    (pa.date64(), st.dates()),
    (pa.time32("s"), st.times().map(lambda t: t.replace(microsecond=0))),
    (pa.time64("us"), st.times()),
    (pa.duration("ms"), st.integers(-(10**12), 10**12).map(lambda ms: dt.timedelta(milliseconds=ms))),
    (pa.decimal128(12, 2), DECIMALS),
    (pa.decimal256(40, 2), DECIMALS),
    (
        pa.month_day_nano_interval(),
        st.tuples(ints(32, True), ints(32, True), ints(64, True)).map(lambda t: pa.MonthDayNano(list(t))),
    ),
]

# Gathered through pyarrow's take.
FALLBACK: list[tuple[pa.DataType, st.SearchStrategy[Any]]] = [
    (pa.list_(pa.int32()), st.lists(st.integers(-5, 5), max_size=3)),
    (
        pa.struct([("a", pa.int64()), ("b", pa.utf8())]),
        st.fixed_dictionaries({"a": st.integers(-5, 5), "b": st.text(max_size=3)}),
    ),
    (pa.dictionary(pa.int32(), pa.utf8()), st.sampled_from(["x", "yy", "zzz"])),
    (pa.null(), st.none()),
]

TYPES = NATIVE + FALLBACK


def column(values: st.SearchStrategy[Any], nulls: bool) -> st.SearchStrategy[list[Any]]:
    item = st.one_of(st.none(), values) if nulls else values
    return st.lists(item, max_size=60)


@st.composite
def sliced_columns(
    draw: st.DrawFn, types: list[tuple[pa.DataType, st.SearchStrategy[Any]]]
) -> list[pa.Array]:
    """Columns of one length, each built from a longer list and sliced at its own offset."""
    n = draw(st.integers(0, 40))
    out = []
    for dtype, values in types:
        nulls = draw(st.booleans())
        item = st.one_of(st.none(), values) if nulls else values
        before = draw(st.lists(item, max_size=10))
        middle = draw(st.lists(item, min_size=n, max_size=n))
        after = draw(st.lists(item, max_size=3))
        arr = pa.array(before + middle + after, dtype)
        out.append(arr.slice(len(before), n))
    return out


@contextlib.contextmanager
def threads(n: int, min_rows: int = 1) -> Iterator[None]:
    """Run the block with ``n`` threads from ``min_rows`` rows on (1: every call on the caller)."""
    previous = _arrow.parallel_config(threads=n, min_rows=min_rows)
    try:
        yield
    finally:
        _arrow.parallel_config(*previous)


def check(arrays: list[pa.Array], order: list[int]) -> None:
    for index_type in (pa.int64(), pa.int32()):  # partition's order, and assign's below 2**31 rows
        indices = pa.array(order, index_type)
        got = _arrow.gather(arrays, indices)
        assert len(got) == len(arrays)
        for arr, result in zip(arrays, got, strict=True):
            expected = arr.take(indices)
            result.validate(full=True)
            assert result.type == arr.type
            assert result.null_count == expected.null_count
            assert result.equals(expected), (arr.type, result, expected)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), index=st.integers(0, len(TYPES) - 1))
def test_gather_equals_take_for_every_type(data: st.DataObject, index: int) -> None:
    dtype, values = TYPES[index]
    nulls = data.draw(st.booleans())
    arr = pa.array(data.draw(column(values, nulls)), dtype)
    order = data.draw(st.permutations(list(range(len(arr)))))
    check([arr], order)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_gather_of_several_sliced_columns(data: st.DataObject) -> None:
    chosen = data.draw(st.lists(st.sampled_from(TYPES), min_size=1, max_size=6))
    arrays = data.draw(sliced_columns(chosen))
    order = data.draw(st.permutations(list(range(len(arrays[0])))))
    check(arrays, order)


@settings(max_examples=50, deadline=None)
@given(bits=st.lists(st.booleans(), min_size=1, max_size=200), data=st.data())
def test_gather_of_bits_across_bytes(bits: list[bool], data: st.DataObject) -> None:
    # Boolean values and validity at every bit offset, including a tail of < 8 rows.
    offset = data.draw(st.integers(0, len(bits) - 1))
    values = pa.array(bits).slice(offset)
    with_nulls = pa.array([b if i % 3 else None for i, b in enumerate(bits)]).slice(offset)
    order = data.draw(st.permutations(list(range(len(values)))))
    check([values, with_nulls], order)


def test_gather_of_long_values_and_a_sliced_order() -> None:
    values = ["x" * n for n in (0, 1, 7, 8, 15, 16, 17, 31, 32, 33, 100, 1000)]
    arr = pa.array(values * 3, pa.large_utf8()).slice(2)
    for index_type in (pa.int64(), pa.int32()):
        order = pa.array([99, *reversed(range(len(arr)))], index_type).slice(1)
        got = _arrow.gather([arr], order)[0]
        got.validate(full=True)
        assert got.equals(arr.take(order))


def test_gather_of_nothing() -> None:
    empty = pa.array([], pa.int64())
    assert _arrow.gather([], empty) == []
    got = _arrow.gather([pa.array([], pa.utf8()), pa.array([1, 2], pa.int8()).slice(2)], empty)
    assert [a.type for a in got] == [pa.utf8(), pa.int8()]
    assert [len(a) for a in got] == [0, 0]


def test_gather_rejects_bad_orders() -> None:
    arr = pa.array(["", "", "abc"])
    with pytest.raises(TypeError, match="int32 or int64"):
        _arrow.gather([arr], pa.array([0, 1, 2], pa.uint32()))
    with pytest.raises(TypeError, match="int32 or int64"):
        _arrow.gather([arr], [0, 1, 2])
    with pytest.raises(TypeError, match="int32 or int64"):
        _arrow.gather([arr], pa.array([0, None, 2], pa.int64()))
    with pytest.raises(ValueError, match="has 3 rows, order has 2"):
        _arrow.gather([arr], pa.array([0, 1], pa.int64()))
    with pytest.raises(ValueError, match="not a permutation"):
        _arrow.gather([arr], pa.array([2, 2, 2], pa.int64()))


def test_ranges_repeat64_and_scatter_groups() -> None:
    assert _arrow.ranges([5, 100, 7], [2, 0, 3]).to_pylist() == [5, 6, 7, 8, 9]
    assert _arrow.ranges([], []).to_pylist() == []
    assert _arrow.sequence(2**64 - 2, 2).to_pylist() == [2**64 - 2, 2**64 - 1]
    with pytest.raises(ValueError):
        _arrow.ranges([1], [-1])

    arrival = _arrow.repeat64(1_700_000_000_123, 3, pa.timestamp("ms", tz="UTC"))
    assert arrival.equals(pa.repeat(pa.scalar(1_700_000_000_123, pa.timestamp("ms", tz="UTC")), 3))
    assert _arrow.repeat64(-1, 2, pa.int64()).to_pylist() == [-1, -1]
    with pytest.raises(TypeError):
        _arrow.repeat64(1, 2, pa.int32())

    # rows 0..4 in groups [1, 3] and [0, 2, 4]
    order = pa.array([1, 3, 0, 2, 4], pa.int64())
    shards, seqs = _arrow.scatter_groups(order, [10, 20], [2, 3], [7, 9])
    assert shards.to_pylist() == [9, 7, 9, 7, 9]
    assert seqs.to_pylist() == [20, 10, 21, 11, 22]
    assert _arrow.scatter_sequences(order, [10, 20], [2, 3]).equals(seqs)


def test_row_nbytes_by_groups_equals_row_nbytes_of_each_slice() -> None:
    batch = pa.record_batch(
        {
            "s": pa.array(["a", "bbbb", None, "cc", "", "dddddd"]),
            "l": pa.array([[1], [1, 2, 3, 4], [], None, [5, 6], [7]], pa.list_(pa.int64())),
            "f": pa.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
        }
    ).slice(0, 6)
    groups = [2, 0, 3, 1]
    expected: list[int] = []
    start = 0
    for count in groups:
        if count:
            expected += _arrow.row_nbytes(batch.slice(start, count)).to_pylist()
        start += count
    assert _arrow.row_nbytes(batch, groups).to_pylist() == expected
    with pytest.raises(ValueError, match="groups add up"):
        _arrow.row_nbytes(batch, [1])


# -- two threads ---------------------------------------------------------------------


def gathered_both_ways(arrays: list[pa.Array], order: pa.Array) -> list[pa.Array]:
    """gather on one thread and split across two (from one row on); asserts they agree, bit for bit."""
    with threads(1):
        one = _arrow.gather(arrays, order)
    with threads(2):
        two = _arrow.gather(arrays, order)
    for a, b in zip(one, two, strict=True):
        b.validate(full=True)
        assert a.equals(b)
        assert [x.to_pybytes() if x else None for x in a.buffers()] == [
            x.to_pybytes() if x else None for x in b.buffers()
        ]
    return two


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_gather_on_two_threads_equals_one_thread_and_take(data: st.DataObject) -> None:
    chosen = data.draw(st.lists(st.sampled_from(TYPES), min_size=1, max_size=6))
    arrays = data.draw(sliced_columns(chosen))
    index_type = data.draw(st.sampled_from([pa.int64(), pa.int32()]))
    order = pa.array(data.draw(st.permutations(list(range(len(arrays[0]))))), index_type)
    for arr, got in zip(arrays, gathered_both_ways(arrays, order), strict=True):
        assert got.equals(arr.take(order))


VALUE_PATTERNS = {
    "empty": lambda i: "",
    "one byte": lambda i: "x",
    "15 16 17": lambda i: "y" * (15 + i % 3),
    "empty runs": lambda i: "z" * (i % 40 == 0) * 20,
    "long and short": lambda i: "w" * (100 if i % 7 == 0 else i % 5),
}


@pytest.mark.parametrize("pattern", sorted(VALUE_PATTERNS))
@pytest.mark.parametrize("dtype", [pa.utf8(), pa.large_binary()])
def test_gather_var_length_halves_meet(pattern: str, dtype: pa.DataType) -> None:
    # Part 0 copies forwards, part 1 backwards; where they meet, short copies must
    # not spill over the other part's bytes, whatever the lengths around the split.
    make = VALUE_PATTERNS[pattern]
    for n in (1, 7, 8, 9, 16, 17, 33, 100, 1000):
        values = [make(i) for i in range(n + 3)]
        arr = pa.array(values if dtype == pa.utf8() else [v.encode() for v in values], dtype).slice(2, n)
        for order in (list(range(n)), list(reversed(range(n))), [(i * 7) % n for i in range(n)]):
            if sorted(order) != list(range(n)):
                continue
            indices = pa.array(order, pa.int64())
            assert gathered_both_ways([arr], indices)[0].equals(arr.take(indices))


def test_gather_threshold_boundary() -> None:
    # With min_rows=64: 63 rows on the caller alone, 64 and 65 in two halves.
    arrays = [
        pa.array([f"v{i}" * (i % 4) if i % 5 else None for i in range(300)]),
        pa.array(range(300)),
        pa.array([i % 3 == 0 if i % 7 else None for i in range(300)]),
    ]
    for n in (63, 64, 65):
        cut = [a.slice(300 - n) for a in arrays]
        order = pa.array(list(reversed(range(n))), pa.int64())
        with threads(2, min_rows=64):
            got = _arrow.gather(cut, order)
        for arr, result in zip(cut, got, strict=True):
            result.validate(full=True)
            assert result.equals(arr.take(order))


def test_gather_checks_orders_alike_on_both_threads() -> None:
    arr = pa.array(["aa", "b", "cc"] * 20)
    n = len(arr)
    # Not a permutation but the same bytes: gathered as take would.
    same_bytes = pa.array([0, 0, 1, *range(3, n)], pa.int64())
    for count in (1, 2):
        with threads(count):
            assert _arrow.gather([arr], same_bytes)[0].equals(arr.take(same_bytes))
    for bad in ([0, 2, 0], [1, 1, 1]):  # more bytes than the input's, and fewer
        order = pa.array([*bad, *range(3, n)], pa.int64())
        for count in (1, 2):
            with threads(count), pytest.raises(ValueError, match="not a permutation"):
                _arrow.gather([arr], order)


def test_the_helper_thread_takes_tasks() -> None:
    keys = pa.array([f"user-{i:06d}" for i in range(200_000)])
    order = pa.array(list(reversed(range(len(keys)))), pa.int64())
    expected = keys.take(order)
    before = _arrow.helper_tasks()
    with threads(2):
        for _ in range(50):
            assert _arrow.gather([keys], order)[0].equals(expected)
            if _arrow.helper_tasks() > before:
                break
    assert _arrow.helper_tasks() > before


def test_parallel_config_checks_its_arguments() -> None:
    previous = _arrow.parallel_config()
    assert previous[0] in (1, 2) and previous[1] >= 1
    with pytest.raises(ValueError, match="threads=3"):
        _arrow.parallel_config(threads=3)
    with pytest.raises(ValueError, match="min_rows=0"):
        _arrow.parallel_config(min_rows=0)
    assert _arrow.parallel_config() == previous


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_its_own_helper() -> None:
    keys = pa.array([f"k{i}" for i in range(50_000)])
    with threads(2):
        expected = _hashing.hash_array(keys)  # the parent's helper is running now
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() of a threaded process
            pid = os.fork()
        if pid == 0:  # the child: no helper thread was copied; a call must start one, not hang
            status = 1
            try:
                signal.alarm(60)
                status = 0 if _hashing.hash_array(keys).equals(expected) else 2
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


def test_row_nbytes_of_a_batch_equals_row_nbytes_of_its_columns() -> None:
    batch = pa.record_batch(
        {
            "s": pa.array(["a", "bbbb", None, "cc", "", "dddddd"]).slice(1, 4),
            "b": pa.array([b"x", b"yy", b"", b"zzz"], pa.large_binary()),
            "l": pa.array([[1], [1, 2, 3, 4], [], None], pa.list_(pa.int64())),
            "f": pa.array([1.0, 2.0, 3.0, 4.0]),
        }
    )
    for groups in (None, [1, 3], [4]):
        assert _arrow.row_nbytes(batch.columns, groups).equals(_arrow.row_nbytes(batch, groups))
    with pytest.raises(ValueError, match="equal length"):
        _arrow.row_nbytes([pa.array([1, 2]), pa.array([1])])
    assert len(_arrow.row_nbytes([])) == 0


@settings(max_examples=100, deadline=None)
@given(
    strings=st.lists(st.one_of(st.none(), st.text(max_size=20)), min_size=1, max_size=60),
    repeats=st.lists(st.sampled_from(["s", "s", "s2", "large", "sliced", "f"]), max_size=6),
    data=st.data(),
)
def test_row_nbytes_of_columns_equals_the_model(
    strings: list[str | None], repeats: list[str], data: st.DataObject
) -> None:
    # The same array may come more than once (a put's key column is also a payload
    # column): each occurrence counts.
    n = len(strings)
    start = data.draw(st.integers(0, n - 1))
    base = pa.array(strings, pa.utf8())
    arrays = {
        "s": base.slice(start),
        "s2": pa.array(strings[start:], pa.utf8()),  # equal values, other buffers
        "large": base.cast(pa.large_utf8()).slice(start),
        "sliced": base.slice(start),  # another Array over the same offsets
        "f": pa.array(range(n - start), pa.float64()),
    }
    columns = [arrays[name] for name in repeats]
    lengths = [len(s.encode()) if s is not None else 0 for s in strings[start:]]
    width = {"s": 4, "s2": 4, "sliced": 4, "large": 8, "f": 8}
    expected = [
        sum(width[name] + (length if name != "f" else 0) for name in repeats) for length in lengths
    ]
    if columns:
        assert _arrow.row_nbytes(columns).to_pylist() == expected
