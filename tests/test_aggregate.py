"""streamcore.aggregate: Aggregator checked against pyarrow's group_by, and window_start."""

from __future__ import annotations

import datetime as dt
import gc
import itertools
import math
import pickle
import sys
import threading
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamcore import _aggregate
from streamcore.aggregate import Aggregator, window_start
from streamcore.errors import ConfigError, InvalidRecordsError

OPS = ("sum", "min", "max", "mean")
NAN = float("nan")
INF = float("inf")

KEY_TYPES = {
    "utf8": pa.utf8(),
    "large_utf8": pa.large_utf8(),
    "binary": pa.binary(),
    "large_binary": pa.large_binary(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "uint8": pa.uint8(),
    "uint16": pa.uint16(),
    "uint32": pa.uint32(),
    "uint64": pa.uint64(),
}
VALUE_TYPES = {
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "uint8": pa.uint8(),
    "uint32": pa.uint32(),
    "uint64": pa.uint64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
}


# --- the oracle -----------------------------------------------------------------------


def pyarrow_result(table: pa.Table, agg_spec: dict[str, Any]) -> pa.Table:
    """pyarrow's group_by with the Aggregator's output names and column order."""
    by = agg_spec["by"]
    aggregations: list[tuple[Any, str]] = []
    names = list(by)
    if agg_spec.get("count", True):
        aggregations.append(([], "count_all"))
        names.append("count")
    for op in OPS:
        for col in agg_spec.get(op, []):
            aggregations.append((col, op))
            names.append(f"{col}_{op}")
    out = table.group_by(by, use_threads=False).aggregate(aggregations)
    # pyarrow puts the aggregates first or last depending on its version; reorder by name.
    pa_names = list(by) + [
        "count_all" if func == "count_all" else f"{col}_{func}" for col, func in aggregations
    ]
    return pa.Table.from_arrays([out[name] for name in pa_names], names=names)


def same_value(got: Any, want: Any, *, exact: bool, abs_tol: float = 1e-6) -> bool:
    if isinstance(want, float) and isinstance(got, float):
        if math.isnan(want) or math.isnan(got):
            return math.isnan(want) and math.isnan(got)
        if exact or math.isinf(want):
            return got == want
        return math.isclose(got, want, rel_tol=1e-9, abs_tol=abs_tol)
    return bool(got == want) and type(got) is type(want)


def rounding_tolerance(table: pa.Table | None, name: str) -> float:
    """How far float sums of output column ``name`` may drift when added in another
    order: n * eps * sum of |values| of its input column (catastrophic cancellation
    of large values leaves a small sum far from its exact value)."""
    column = name.rsplit("_", 1)[0]
    if table is None or column not in table.column_names:
        return 1e-6
    values = [abs(v) for v in table[column].to_pylist() if isinstance(v, (int, float)) and math.isfinite(v)]
    return max(1e-6, 4 * sys.float_info.epsilon * len(values) * sum(values))


def first_appearance(table: pa.Table, by: Sequence[str]) -> list[tuple[Any, ...]]:
    """Distinct key tuples of ``table`` in order of first appearance."""
    columns = [table[k].to_pylist() for k in by]
    return list(dict.fromkeys(zip(*columns, strict=True)))


def assert_same(
    got: pa.Table,
    want: pa.Table,
    by: Sequence[str],
    *,
    ordered: bool,
    table: pa.Table | None = None,
) -> None:
    """Equal schemas and rows (in any order); float sums and means within rounding
    unless ``ordered``, which also checks that rows come in order of first
    appearance in ``table`` (pyarrow's own order differs for composite keys)."""
    assert got.schema == want.schema, (got.schema, want.schema)
    assert got.num_rows == want.num_rows
    tolerance = {name: rounding_tolerance(table, name) for name in got.column_names}
    got_rows = got.to_pylist()
    want_rows = want.to_pylist()
    if ordered and table is not None:
        assert [tuple(r[k] for k in by) for r in got_rows] == first_appearance(table, by)
    got_by_key = {tuple(r[k] for k in by): r for r in got_rows}
    assert len(got_by_key) == len(got_rows), "a group appears twice"
    for row in want_rows:
        key = tuple(row[k] for k in by)
        assert key in got_by_key, key
        other = got_by_key[key]
        for name, value in row.items():
            # Single pass in row order: float sums are bit-exact with pyarrow's.
            exact = ordered and not name.endswith("_mean")
            assert same_value(other[name], value, exact=exact, abs_tol=tolerance[name]), (
                key,
                name,
                other[name],
                value,
            )


def assert_identical(got: pa.Table, want: pa.Table) -> None:
    """Same schema and the same rows in the same order, NaN equal to NaN."""
    assert got.schema == want.schema, (got.schema, want.schema)
    got_rows, want_rows = got.to_pylist(), want.to_pylist()
    assert len(got_rows) == len(want_rows)
    for got_row, want_row in zip(got_rows, want_rows, strict=True):
        for name, value in want_row.items():
            assert same_value(got_row[name], value, exact=True), (name, got_row, want_row)


# --- data -------------------------------------------------------------------------------


def key_values(draw: st.DrawFn, type_name: str, n: int, n_distinct: int) -> list[Any]:
    dtype = KEY_TYPES[type_name]
    if pa.types.is_integer(dtype):
        lo = 0 if type_name.startswith("u") else -(2 ** (dtype.bit_width - 1))
        hi = 2**dtype.bit_width - 1 if type_name.startswith("u") else 2 ** (dtype.bit_width - 1) - 1
        element: st.SearchStrategy[Any] = st.integers(lo, hi)
    elif "binary" in type_name:
        element = st.binary(max_size=20)
    else:
        element = st.text(max_size=20)
    pool = draw(st.lists(element, min_size=1, max_size=n_distinct, unique=True))
    pool_or_null = (
        st.one_of(st.none(), st.sampled_from(pool)) if draw(st.booleans()) else (st.sampled_from(pool))
    )
    return [draw(pool_or_null) for _ in range(n)]


def value_values(draw: st.DrawFn, type_name: str, n: int) -> list[Any]:
    dtype = VALUE_TYPES[type_name]
    if pa.types.is_integer(dtype):
        if draw(st.booleans()):
            lo, hi = (0, 100) if type_name.startswith("u") else (-100, 100)
        elif type_name.startswith("u"):
            lo, hi = 0, 2**dtype.bit_width - 1
        else:
            lo, hi = -(2 ** (dtype.bit_width - 1)), 2 ** (dtype.bit_width - 1) - 1
        element: st.SearchStrategy[Any] = st.integers(lo, hi)
    else:
        width = 32 if type_name == "float32" else 64
        finite = st.floats(-1e6, 1e6, width=width)
        element = st.one_of(finite, finite, finite, st.sampled_from([NAN, INF, -INF, -0.0]))
    null_rate = draw(st.sampled_from([0.0, 0.0, 0.2, 0.9]))
    return [None if draw(st.floats(0, 1)) < null_rate else draw(element) for _ in range(n)]


@st.composite
def tables(draw: st.DrawFn, max_rows: int = 120) -> tuple[pa.Table, dict[str, Any]]:
    """A random table and a random aggregation spec over it."""
    n = draw(st.integers(0, max_rows))
    n_keys = draw(st.integers(1, 3))
    n_distinct = draw(st.sampled_from([1, 3, 10, 200]))
    columns: dict[str, pa.Array] = {}
    by = []
    for k in range(n_keys):
        type_name = draw(st.sampled_from(sorted(KEY_TYPES)))
        name = f"k{k}"
        columns[name] = pa.array(key_values(draw, type_name, n, n_distinct), KEY_TYPES[type_name])
        by.append(name)
    values = []
    for v in range(draw(st.integers(1, 2))):
        type_name = draw(st.sampled_from(sorted(VALUE_TYPES)))
        name = f"v{v}"
        columns[name] = pa.array(value_values(draw, type_name, n), VALUE_TYPES[type_name])
        values.append(name)
    columns["other"] = pa.array(range(n), pa.int64())  # not aggregated
    agg_spec: dict[str, Any] = {"by": by, "count": draw(st.booleans())}
    for op in OPS:
        agg_spec[op] = draw(st.lists(st.sampled_from(values), unique=True))
    return pa.table(columns), agg_spec


def splits(draw: st.DrawFn, n: int) -> list[int]:
    """Sorted cut points in 0..n (repeats make empty pieces)."""
    cuts = draw(st.lists(st.integers(0, n), max_size=6))
    return sorted(cuts)


def pieces(table: pa.Table, cuts: list[int]) -> list[pa.Table]:
    bounds = [0, *cuts, table.num_rows]
    return [table.slice(a, b - a) for a, b in itertools.pairwise(bounds)]


def feed(draw: st.DrawFn, agg: Aggregator, table: pa.Table) -> None:
    """Update ``agg`` with ``table`` cut into random pieces, as batches or tables."""
    for piece in pieces(table, splits(draw, table.num_rows)):
        form = draw(st.sampled_from(["batch", "table", "rechunked"]))
        if form == "batch":
            agg.update(piece.combine_chunks().to_batches()[0] if piece.num_rows else piece)
        elif form == "table":
            agg.update(piece)
        else:
            # Every column chunked differently: the Table path must align them.
            columns = {}
            for name in piece.column_names:
                col = piece[name].combine_chunks()
                cuts = splits(draw, len(col))
                bounds = [0, *cuts, len(col)]
                columns[name] = pa.chunked_array(
                    [col.slice(a, b - a) for a, b in itertools.pairwise(bounds)],
                    col.type,
                )
            agg.update(pa.table(columns))


# Kept small for the default run (under ~30 s in all); they passed 1,500 examples each,
# with up to 400 rows, under AddressSanitizer too, while the aggregator was written.
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MERGE_SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- properties -----------------------------------------------------------------------


@SETTINGS
@given(data=tables(), chunks=st.data())
def test_matches_pyarrow_group_by(data: tuple[pa.Table, dict[str, Any]], chunks: st.DataObject) -> None:
    table, agg_spec = data
    agg = Aggregator(**agg_spec)
    feed(chunks.draw, agg, table)
    want = pyarrow_result(table, agg_spec)
    assert len(agg) == want.num_rows
    # One pass in row order: same groups in the same (first appearance) order.
    assert_same(agg.result(), want, agg_spec["by"], ordered=True, table=table)


@MERGE_SETTINGS
@given(data=tables(), chunks=st.data())
def test_merge_and_state_round_trip_match_pyarrow(
    data: tuple[pa.Table, dict[str, Any]], chunks: st.DataObject
) -> None:
    table, agg_spec = data
    parts = pieces(table, sorted(chunks.draw(st.lists(st.integers(0, table.num_rows), max_size=3))))
    partials = []
    for part in parts:
        agg = Aggregator(**agg_spec)
        half = chunks.draw(st.integers(0, part.num_rows))
        feed(chunks.draw, agg, part.slice(0, half))
        if chunks.draw(st.booleans()):  # save and restore mid-stream, then go on
            agg = Aggregator.from_state(agg.to_state())
        feed(chunks.draw, agg, part.slice(half))
        partials.append(agg)
    total = Aggregator(**agg_spec)
    for agg in partials:
        total.merge(agg)
    if chunks.draw(st.booleans()):
        total = Aggregator.from_state(total.to_state())
    assert_same(total.result(), pyarrow_result(table, agg_spec), agg_spec["by"], ordered=False, table=table)


@MERGE_SETTINGS
@given(data=tables(), chunks=st.data())
def test_copies_are_independent_and_match_pyarrow(
    data: tuple[pa.Table, dict[str, Any]], chunks: st.DataObject
) -> None:
    # What a window does before every invocation: copy, fold into the copy, keep it.
    table, agg_spec = data
    cut = chunks.draw(st.integers(0, table.num_rows))
    agg = Aggregator(**agg_spec)
    feed(chunks.draw, agg, table.slice(0, cut))
    before = agg.result()
    twin = agg.copy()
    feed(chunks.draw, twin, table.slice(cut))
    assert_identical(agg.result(), before)  # folding into the copy left the original alone
    assert len(twin) == pyarrow_result(table, agg_spec).num_rows
    assert_same(twin.result(), pyarrow_result(table, agg_spec), agg_spec["by"], ordered=True, table=table)
    # and the other way round: the original goes on, the copy stays as it was
    twin_before = twin.result()
    feed(chunks.draw, agg, table.slice(cut))
    assert_identical(twin.result(), twin_before)
    assert_same(agg.result(), pyarrow_result(table, agg_spec), agg_spec["by"], ordered=True, table=table)


COW_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@COW_SETTINGS
@given(data=tables(max_rows=160), steps=st.data())
def test_copies_updates_merges_and_drops_in_any_order(
    data: tuple[pa.Table, dict[str, Any]], steps: st.DataObject
) -> None:
    # Copies share their groups copy-on-write, and one of them at a time appends in
    # place. Whatever the order of copies, updates, merges, state round trips and
    # drops (a window's copy per invocation, a retry copying the original again, a
    # stale invocation still folding), each aggregator holds exactly what was folded
    # into it and into its ancestors before it was copied.
    table, agg_spec = data
    by = agg_spec["by"]
    pool: list[tuple[Aggregator, list[pa.Table], bool]] = [(Aggregator(**agg_spec), [], True)]

    def check(agg: Aggregator, parts: list[pa.Table], exact: bool) -> None:
        if not parts:
            return
        folded = pa.concat_tables(parts)
        want = pyarrow_result(folded, agg_spec)
        assert len(agg) == want.num_rows
        assert_same(agg.result(), want, by, ordered=exact, table=folded)

    for _ in range(steps.draw(st.integers(1, 14))):
        i = steps.draw(st.integers(0, len(pool) - 1))
        agg, parts, exact = pool[i]
        action = steps.draw(
            st.sampled_from(["copy", "copy", "update", "update", "update", "drop", "merge", "state", "check"])
        )
        if action == "copy":
            pool.append((agg.copy(), list(parts), exact))
        elif action == "update":
            start = steps.draw(st.integers(0, table.num_rows))
            piece = table.slice(start, steps.draw(st.integers(0, table.num_rows - start)))
            agg.update(piece)
            parts.append(piece)
        elif action == "drop" and len(pool) > 1:
            del pool[i]
        elif action == "merge":
            other, other_parts, _ = pool[steps.draw(st.integers(0, len(pool) - 1))]
            agg.merge(other)
            pool[i] = (agg, parts + other_parts, False)
        elif action == "state":
            pool[i] = (Aggregator.from_state(agg.to_state()), parts, exact)
        else:
            check(agg, parts, exact)
        del agg
    for agg, parts, exact in pool:
        check(agg, parts, exact)


# --- semantics, by example -------------------------------------------------------------


def test_nan_and_null_semantics_follow_pyarrow() -> None:
    table = pa.table(
        {
            "k": pa.array(["a", "a", "b", "b", "c", None, None, "d", "e", "e"]),
            "v": pa.array([1.0, NAN, NAN, NAN, None, 2.0, 3.0, None, NAN, 2.0]),
        }
    )
    agg = Aggregator(by=["k"], sum=["v"], min=["v"], max=["v"], mean=["v"])
    agg.update(table)
    rows = {r["k"]: r for r in agg.result().to_pylist()}
    # sum and mean propagate NaN; min and max skip it unless every value is NaN.
    assert math.isnan(rows["a"]["v_sum"]) and math.isnan(rows["a"]["v_mean"])
    assert rows["a"]["v_min"] == 1.0 and rows["a"]["v_max"] == 1.0
    assert math.isnan(rows["b"]["v_min"]) and math.isnan(rows["b"]["v_max"])
    # A group whose values are all null has null aggregates, and is still counted.
    assert rows["c"] == {"k": "c", "count": 1, "v_sum": None, "v_min": None, "v_max": None, "v_mean": None}
    # Null keys form one group.
    assert rows[None] == {"k": None, "count": 2, "v_sum": 5.0, "v_min": 2.0, "v_max": 3.0, "v_mean": 2.5}
    assert_same(
        agg.result(),
        pyarrow_result(table, {"by": ["k"], **{op: ["v"] for op in OPS}}),
        ["k"],
        ordered=True,
        table=table,
    )


def test_integer_sums_wrap_and_means_do_not() -> None:
    big = 2**62
    table = pa.table(
        {
            "k": pa.array([1, 1, 1, 2], pa.int32()),
            "i": pa.array([big, big, big, -(2**63)], pa.int64()),
            "u": pa.array([2**63, 2**63, 5, 2**64 - 1], pa.uint64()),
        }
    )
    agg_spec = {"by": ["k"], "sum": ["i", "u"], "mean": ["i", "u"], "min": ["u"], "max": ["i"]}
    agg = Aggregator(**agg_spec)
    agg.update(table)
    result = agg.result()
    assert result.schema.field("i_sum").type == pa.int64()
    assert result.schema.field("u_sum").type == pa.uint64()
    assert result.schema.field("u_min").type == pa.uint64()
    assert result["i_sum"].to_pylist() == [3 * big - 2**64, -(2**63)]
    assert result["u_sum"].to_pylist() == [5, 2**64 - 1]
    assert result["i_mean"].to_pylist() == [float(big), -(2.0**63)]
    assert_same(result, pyarrow_result(table, agg_spec), ["k"], ordered=True, table=table)


def test_output_types_and_column_order() -> None:
    table = pa.table(
        {
            "k": pa.array([b"x", b"y"], pa.large_binary()),
            "a": pa.array([1, 2], pa.int8()),
            "b": pa.array([1.5, 2.5], pa.float32()),
        }
    )
    agg = Aggregator(by="k", sum=["a", "b"], min=["b", "a"], max="a", mean=["b"])
    agg.update(table)
    schema = agg.result().schema
    assert schema.names == ["k", "count", "a_sum", "b_sum", "b_min", "a_min", "a_max", "b_mean"]
    assert schema.types == [
        pa.large_binary(),
        pa.int64(),
        pa.int64(),
        pa.float64(),
        pa.float32(),
        pa.int8(),
        pa.int8(),
        pa.float64(),
    ]


def test_composite_keys_with_nulls_and_timestamp_window() -> None:
    ts = pa.array([0, 59_999, 60_000, 61_000, None, 120_000], pa.timestamp("ms", tz="UTC"))
    table = pa.table(
        {
            "ts": ts,
            "user": pa.array(["a", "a", "a", None, "b", None]),
            "value": pa.array([1, 2, 3, 4, 5, 6], pa.int64()),
        }
    )
    table = table.append_column("window", window_start(table["ts"], 60))
    agg_spec = {"by": ["window", "user"], "sum": ["value"]}
    agg = Aggregator(**agg_spec)
    agg.update(table)
    got = agg.result()
    assert got.schema.field("window").type == pa.timestamp("ms", tz="UTC")
    assert [(r["user"], r["count"], r["value_sum"]) for r in got.to_pylist()] == [
        ("a", 2, 3),
        ("a", 1, 3),
        (None, 1, 4),
        ("b", 1, 5),
        (None, 1, 6),
    ]
    assert_same(got, pyarrow_result(table, agg_spec), agg_spec["by"], ordered=True, table=table)


def test_dictionary_and_view_keys_are_held_decoded() -> None:
    table = pa.table(
        {
            "d": pa.array(["x", "y", "x", None]).dictionary_encode(),
            "s": pa.array(["p", "p", "q", "q"], pa.string_view()),
            "v": pa.array([1, 2, 3, 4]),
        }
    )
    agg = Aggregator(by=["d", "s"], sum=["v"])
    agg.update(table)
    result = agg.result()
    assert result.schema.field("d").type == pa.utf8()
    assert result.schema.field("s").type == pa.large_utf8()
    assert result.to_pylist() == [
        {"d": "x", "s": "p", "count": 1, "v_sum": 1},
        {"d": "y", "s": "p", "count": 1, "v_sum": 2},
        {"d": "x", "s": "q", "count": 1, "v_sum": 3},
        {"d": None, "s": "q", "count": 1, "v_sum": 4},
    ]


def test_many_groups_grow_the_table() -> None:
    n = 50_000
    keys = pa.array([f"user-{i % 20_011:05d}" for i in range(n)])
    table = pa.table({"user": keys, "v": pa.array(range(n), pa.int64())})
    agg = Aggregator(by=["user"], sum=["v"], max=["v"])
    for batch in table.to_batches(max_chunksize=777):
        agg.update(batch)
    assert len(agg) == 20_011
    assert_same(
        agg.result(),
        pyarrow_result(table, {"by": ["user"], "sum": ["v"], "max": ["v"]}),
        ["user"],
        ordered=True,
        table=table,
    )


def test_big_batches_grow_the_table_while_folding() -> None:
    # Batches longer than a pass (1024 rows), almost every row a new group, then
    # copies of small and large tables going on with more groups.
    n = 5_000
    keys = pa.array([f"k{(i * 7919) % 4_001}" for i in range(n)])
    ints = pa.array([(i * 104_729) % 3_001 - 1_500 for i in range(n)], pa.int16())
    table = pa.table({"s": keys, "i": ints, "v": pa.array(range(n), pa.int64())})
    for by in (["s"], ["i"], ["s", "i"]):
        agg_spec = {"by": by, "sum": ["v"], "min": ["v"]}
        agg = Aggregator(**agg_spec)
        agg.update(table.slice(0, 40))
        agg = agg.copy()  # a table sized for a 40-row batch
        agg.update(table.slice(40, 3_000))
        agg = agg.copy()
        agg.update(table.slice(3_040))
        want = pyarrow_result(table, agg_spec)
        assert_same(agg.result(), want, by, ordered=True, table=table)


def test_a_copy_of_a_table_sized_for_few_groups_keeps_working() -> None:
    # A first batch of repeated keys sizes the table for its rows; copies shrink it.
    table = pa.table({"k": pa.array(["a", "b"] * 500), "v": pa.array([1.0] * 1_000)})
    agg = Aggregator(by="k", sum="v")
    agg.update(table)
    for round_ in range(3):
        agg = agg.copy()
        more = pa.table({"k": [f"n{round_}-{i}" for i in range(300)], "v": [2.0] * 300})
        agg.update(more)
        table = pa.concat_tables([table, more])
    assert_same(
        agg.result(), pyarrow_result(table, {"by": ["k"], "sum": ["v"]}), ["k"], ordered=True, table=table
    )


def test_copy_and_original_diverge_whichever_is_updated_first() -> None:
    # Both sides add groups (past the capacity, so both grow their arrays) and change
    # shared ones; nulls first appear on one side only.
    first = pa.table({"k": [f"u{i}" for i in range(50)], "v": [float(i) for i in range(50)]})
    more = pa.table({"k": [f"u{i}" for i in range(25, 400)] + [None], "v": [1.0] * 375 + [None]})
    other = pa.table({"k": [f"w{i}" for i in range(300)] + ["u3"], "v": [2.0] * 300 + [None]})
    spec: dict[str, Any] = {"by": ["k"], "sum": ["v"], "max": ["v"]}
    for copy_first in (True, False):
        original = Aggregator(**spec)
        original.update(first)
        copy = original.copy()
        assert copy.nbytes == original.nbytes and len(copy) == len(original)
        updates = [(copy, more), (original, other)] if copy_first else [(original, other), (copy, more)]
        for agg, part in updates:
            agg.update(part)
        for agg, part in ((copy, more), (original, other)):
            folded = pa.concat_tables([first, part])
            assert_same(agg.result(), pyarrow_result(folded, spec), ["k"], ordered=True, table=folded)


def test_a_stale_copy_folding_after_the_original_was_copied_again() -> None:
    # A timed-out invocation (its copy still folding) and the retry's copy of the same
    # committed state: neither sees the other's groups, and the committed one is intact.
    spec: dict[str, Any] = {"by": ["k"], "sum": ["v"]}
    committed = Aggregator(**spec)
    base = pa.table({"k": [f"k{i % 90}" for i in range(300)], "v": list(range(300))})
    committed.update(base)
    before = committed.result()
    stale = committed.copy()  # the first attempt's copy: it appends in place
    retry = committed.copy()  # the retry's copy, while the first one lives
    stale_rows = pa.table({"k": [f"s{i}" for i in range(500)] + ["k1"], "v": [1] * 501})
    retry_rows = pa.table({"k": [f"r{i}" for i in range(200)] + ["k2"], "v": [2] * 201})
    stale.update(stale_rows.slice(0, 250))
    retry.update(retry_rows)
    stale.update(stale_rows.slice(250))  # the stale copy goes on after the retry folded
    again = retry.copy()  # the retry is committed and copied for the next invocation
    again.update(stale_rows.slice(0, 10))
    assert_identical(committed.result(), before)
    for agg, parts in (
        (stale, [base, stale_rows]),
        (retry, [base, retry_rows]),
        (again, [base, retry_rows, stale_rows.slice(0, 10)]),
    ):
        folded = pa.concat_tables(parts)
        assert_same(agg.result(), pyarrow_result(folded, spec), ["k"], ordered=True, table=folded)


def test_dropped_copies_hand_appending_back() -> None:
    # A copy that is dropped (a failed invocation) gives up appending in place: the
    # original takes it back when the copy added nothing, and copies what it uses
    # first when the copy did add groups (which it must not see).
    spec: dict[str, Any] = {"by": ["k"], "sum": ["v"]}
    agg = Aggregator(**spec)
    parts = [pa.table({"k": [f"k{i}" for i in range(100)], "v": [1] * 100})]
    agg.update(parts[0])
    for round_ in range(6):
        copy = agg.copy()
        if round_ % 2:
            copy.update(pa.table({"k": [f"lost{round_}-{i}" for i in range(300)], "v": [5] * 300}))
        del copy
        part = pa.table(
            {"k": [f"k{round_}-{i}" for i in range(round_ * 40)] + ["k7"], "v": [2] * (round_ * 40 + 1)}
        )
        if round_ % 3 == 2:
            agg.update(part)  # the original itself goes on
        else:
            agg = agg.copy()  # a new invocation's copy, committed
            agg.update(part)
        parts.append(part)
    folded = pa.concat_tables(parts)
    assert_same(agg.result(), pyarrow_result(folded, spec), ["k"], ordered=True, table=folded)


def test_a_copy_never_appends_over_groups_another_copy_has() -> None:
    # The original, a copy that added groups, and a copy of that copy that was
    # dropped (so no table appends in place any more): the original and a new copy of
    # it must not take over appending, as their groups end where the first copy's go on.
    spec: dict[str, Any] = {"by": ["k"], "sum": ["v"]}
    base = pa.table({"k": [f"k{i}" for i in range(40)], "v": [1] * 40})
    grown = pa.table({"k": [f"g{i}" for i in range(60)], "v": [2] * 60})
    other = pa.table({"k": [f"o{i}" for i in range(70)], "v": [3] * 70})
    for through_a_copy in (False, True):
        original = Aggregator(**spec)
        original.update(base)
        first = original.copy()
        first.update(grown)
        dropped = first.copy()
        del dropped
        target = original.copy() if through_a_copy else original
        target.update(other)
        for agg, parts in ((first, [base, grown]), (target, [base, other])):
            folded = pa.concat_tables(parts)
            assert_same(agg.result(), pyarrow_result(folded, spec), ["k"], ordered=True, table=folded)


def test_copies_fold_large_inputs_in_threads() -> None:
    # Inputs of 64k rows are folded without the GIL: copies that share their groups,
    # updated, copied and read from several threads at once.
    n = 70_000
    spec: dict[str, Any] = {"by": ["k"], "sum": ["v"], "min": ["v"]}
    base_rows = pa.table({"k": [f"k{i % 3_000}" for i in range(n)], "v": pa.array(range(n), pa.int64())})
    base = Aggregator(**spec)
    base.update(base_rows)
    copies = [base.copy() for _ in range(3)]  # the first may append in place, the others not
    extra = [
        pa.table(
            {
                "k": [f"t{t}-{i % 9_000}" if i % 3 else f"k{i % 3_000}" for i in range(n)],
                "v": pa.array(range(n), pa.int64()),
            }
        )
        for t in range(4)
    ]
    results: list[pa.Table] = []
    errors: list[BaseException] = []

    def fold(agg: Aggregator, rows: pa.Table) -> None:
        try:
            agg.update(rows)
            agg.update(rows.slice(0, 1_000))
        except BaseException as exc:  # reported below
            errors.append(exc)

    def read() -> None:
        for _ in range(20):
            results.append(base.copy().result())

    threads = [threading.Thread(target=fold, args=(agg, extra[t])) for t, agg in enumerate([*copies, base])]
    threads.append(threading.Thread(target=read))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for t, agg in enumerate([*copies, base]):
        folded = pa.concat_tables([base_rows, extra[t], extra[t].slice(0, 1_000)])
        assert_same(agg.result(), pyarrow_result(folded, spec), ["k"], ordered=True, table=folded)
    # Every read saw the base as it was before its own update or after it, never half.
    assert {r.num_rows for r in results} <= {3_000, len(base)}


def test_keys_longer_than_a_slot_can_say() -> None:
    # A slot keeps a key's length below 0xFFFF only; longer keys compare via offsets.
    long = ["x" * 70_000, "x" * 69_999 + "y", "x" * 0xFFFF, "x" * 0xFFFE, "x" * 70_000]
    table = pa.table({"k": long * 3 + ["short", None], "v": list(range(17))})
    for key_type in (pa.utf8(), pa.large_utf8()):
        typed = table.cast(pa.schema([pa.field("k", key_type), pa.field("v", pa.int64())]))
        agg = Aggregator(by="k", sum="v")
        agg.update(typed.slice(0, 4))
        agg = agg.copy()
        agg.update(typed.slice(4))
        spec: dict[str, Any] = {"by": ["k"], "sum": ["v"]}
        assert_same(agg.result(), pyarrow_result(typed, spec), ["k"], ordered=True, table=typed)


def test_group_hash_of_binary_keys() -> None:
    # XXH3-64 up to 16 bytes, XXH64 beyond (bit-exact with the xxhash package), nulls
    # as one constant, slices and both offset widths.
    from streamcore import _aggregate

    xxhash = pytest.importorskip("xxhash")
    keys: list[bytes | None] = [bytes(range(n)) * 2 for n in range(0, 24)]
    keys += [b"user-%05d" % i for i in range(50)] + [b"", None, None]
    for dtype in (pa.binary(), pa.large_binary(), pa.utf8()):
        values = [k if k is None or dtype != pa.utf8() else bytes(b & 0x7F for b in k) for k in keys]
        arr = pa.array([b"pad", *values], pa.binary() if dtype == pa.utf8() else dtype).slice(1)
        if dtype == pa.utf8():
            arr = arr.cast(pa.utf8())
        got = _aggregate.key_hashes(arr).to_pylist()
        want = [
            None if v is None else xxhash.xxh3_64_intdigest(v) if len(v) <= 16 else xxhash.xxh64_intdigest(v)
            for v in values
        ]
        assert [g for g, w in zip(got, want, strict=True) if w is not None] == [
            w for w in want if w is not None
        ]
        assert len({g for g, w in zip(got, want, strict=True) if w is None}) == 1


def test_nulls_appearing_late_and_after_a_copy() -> None:
    # Null keys and null values first show up in later batches (and in copies).
    parts = [
        pa.table({"k": pa.array(["a", "b"]), "i": pa.array([1, 2], pa.int32()), "v": pa.array([1.0, 2.0])}),
        pa.table(
            {"k": pa.array(["a", None]), "i": pa.array([None, 2], pa.int32()), "v": pa.array([None, 4.0])}
        ),
        pa.table(
            {"k": pa.array([None, "c"]), "i": pa.array([1, None], pa.int32()), "v": pa.array([5.0, None])}
        ),
    ]
    table = pa.concat_tables(parts)
    for by in (["k"], ["i"], ["k", "i"]):
        agg_spec = {"by": by, "sum": ["v"], "mean": ["v"], "max": ["v"]}
        agg = Aggregator(**agg_spec)
        for part in parts:
            agg = agg.copy()
            agg.update(part)
        want = pyarrow_result(table, agg_spec)
        assert_same(agg.result(), want, by, ordered=True, table=table)
        restored = Aggregator.from_state(agg.to_state())
        assert_same(restored.result(), want, by, ordered=False)


def test_result_is_cached_per_layout_and_owns_its_memory() -> None:
    agg = Aggregator(by="k", sum="v", min="v")
    agg.update(pa.table({"k": ["x", "y", "x"], "v": [3, 4, 5]}))
    first = agg.result()
    agg.update(pa.table({"k": ["z"], "v": [1]}))
    second = agg.result()
    del agg
    assert first.to_pylist() == [
        {"k": "x", "count": 2, "v_sum": 8, "v_min": 3},
        {"k": "y", "count": 1, "v_sum": 4, "v_min": 4},
    ]
    assert second.num_rows == 3 and second.schema == first.schema
    second.validate(full=True)


def test_empty_inputs_fix_types_and_change_nothing() -> None:
    agg = Aggregator(by=["k"], sum=["v"], mean=["v"])
    assert len(agg) == 0
    unbound = agg.result()
    assert unbound.num_rows == 0
    assert unbound.schema.names == ["k", "count", "v_sum", "v_mean"]
    empty = pa.table({"k": pa.array([], pa.int16()), "v": pa.array([], pa.float32())})
    agg.update(empty)
    agg.update(empty.to_batches()[0] if empty.to_batches() else empty)
    agg.update(pa.Table.from_batches([], empty.schema))
    assert len(agg) == 0
    assert agg.result().schema.types == [pa.int16(), pa.int64(), pa.float64(), pa.float64()]
    agg.update(pa.table({"k": pa.array([7], pa.int16()), "v": pa.array([1.5], pa.float32())}))
    assert agg.result().to_pylist() == [{"k": 7, "count": 1, "v_sum": 1.5, "v_mean": 1.5}]


def test_count_only_and_count_off() -> None:
    table = pa.table({"k": ["a", "b", "a"], "v": [1, 2, 3]})
    agg = Aggregator(by=["k"])
    agg.update(table)
    assert agg.result().to_pylist() == [{"k": "a", "count": 2}, {"k": "b", "count": 1}]
    distinct = Aggregator(by=["k"], count=False)
    distinct.update(table)
    assert distinct.result().to_pylist() == [{"k": "a"}, {"k": "b"}]


def test_clear_len_repr_and_pickle() -> None:
    agg = Aggregator(by=["k"], sum=["v"])
    agg.update(pa.table({"k": ["a", "b", "a"], "v": [1, 2, 3]}))
    assert len(agg) == 2
    assert "with 2 groups" in repr(agg)
    clone = pickle.loads(pickle.dumps(agg))
    assert clone.result().equals(agg.result())
    agg.clear()
    assert len(agg) == 0
    assert agg.result().num_rows == 0
    agg.update(pa.table({"k": ["c"], "v": [5]}))
    assert agg.result().to_pylist() == [{"k": "c", "count": 1, "v_sum": 5}]
    with pytest.raises(InvalidRecordsError, match="'v'"):  # types stay fixed after clear
        agg.update(pa.table({"k": ["c"], "v": [5.0]}))


def test_state_of_an_unbound_aggregator_round_trips() -> None:
    agg = Aggregator.from_state(Aggregator(by=["k"], min=["v"]).to_state())
    assert len(agg) == 0
    agg.update(pa.table({"k": [1, 1], "v": [3, 2]}))
    assert agg.result().to_pylist() == [{"k": 1, "count": 2, "v_min": 2}]


def test_merge_into_an_unbound_aggregator_and_self_merge() -> None:
    source = Aggregator(by=["k"], sum=["v"])
    source.update(pa.table({"k": ["a", "b"], "v": [1, 2]}))
    target = Aggregator(by=["k"], sum=["v"])
    target.merge(Aggregator(by=["k"], sum=["v"]))  # unbound into unbound: nothing
    target.merge(source)
    target.merge(target)
    assert target.result().to_pylist() == [
        {"k": "a", "count": 2, "v_sum": 2},
        {"k": "b", "count": 2, "v_sum": 4},
    ]
    assert len(source) == 2


def test_arrow_pycapsule_input() -> None:
    class Stream:
        def __init__(self, table: pa.Table) -> None:
            self.table = table

        def __arrow_c_stream__(self, requested_schema: object = None) -> object:
            return self.table.__arrow_c_stream__(requested_schema)

    class Array:
        def __init__(self, batch: pa.RecordBatch) -> None:
            self.batch = batch

        def __arrow_c_array__(self, requested_schema: object = None) -> object:
            return self.batch.__arrow_c_array__(requested_schema)

    table = pa.table({"k": ["a", "b", "a"], "v": [1, 2, 3]})
    agg = Aggregator(by=["k"], sum=["v"])
    agg.update(Stream(table))
    agg.update(Array(table.to_batches()[0]))
    assert agg.result()["v_sum"].to_pylist() == [8, 4]


def test_concurrent_updates_are_serialised() -> None:
    table = pa.table({"k": pa.array([i % 97 for i in range(20_000)]), "v": pa.array([1] * 20_000)})
    batches = table.to_batches(max_chunksize=500)
    agg = Aggregator(by=["k"], sum=["v"])

    def work() -> None:
        for batch in batches:
            agg.update(batch)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = agg.result()
    assert len(agg) == 97
    assert sum(result["count"].to_pylist()) == 4 * 20_000
    assert result["count"].to_pylist() == result["v_sum"].to_pylist()


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"by": []}, "by"),
        ({"by": None}, "by"),
        ({"by": ["a", "a"]}, "by"),
        ({"by": [1]}, "by"),
        ({"by": b"k"}, "by"),
        ({"by": ["k"], "count": 1}, "count"),
        ({"by": ["k"], "sum": 5}, "sum"),
        ({"by": ["k"], "min": ["v", "v"]}, "min"),
        ({"by": ["k"], "mean": [None]}, "mean"),
        ({"by": ["count"]}, "count"),
        ({"by": ["v_sum"], "sum": ["v"]}, "sum"),
    ],
)
def test_bad_specs_name_the_option(kwargs: dict[str, Any], option: str) -> None:
    with pytest.raises(ConfigError) as info:
        Aggregator(**kwargs)
    assert info.value.option == option
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("columns", "agg_spec", "column"),
    [
        ({"v": [1]}, {"by": ["k"]}, "k"),  # missing key
        ({"k": [1]}, {"by": ["k"], "sum": ["v"]}, "v"),  # missing value
        ({"k": [1.5], "v": [1]}, {"by": ["k"], "sum": ["v"]}, "k"),  # float key
        ({"k": [[1]], "v": [1]}, {"by": ["k"], "sum": ["v"]}, "k"),  # list key
        ({"k": [1], "v": ["x"]}, {"by": ["k"], "sum": ["v"]}, "v"),  # string value
        ({"k": [1], "v": [True]}, {"by": ["k"], "max": ["v"]}, "v"),  # bool value
    ],
)
def test_unsupported_columns_name_the_column(
    columns: dict[str, list[Any]], agg_spec: dict[str, Any], column: str
) -> None:
    agg = Aggregator(**agg_spec)
    with pytest.raises(InvalidRecordsError, match=f"'{column}'"):
        agg.update(pa.table(columns))


def test_type_changes_and_bad_inputs_are_rejected() -> None:
    agg = Aggregator(by=["k"], sum=["v"])
    agg.update(pa.table({"k": pa.array([1], pa.int32()), "v": [1]}))
    with pytest.raises(InvalidRecordsError, match=r"'k'.*int64.*int32"):
        agg.update(pa.table({"k": pa.array([1], pa.int64()), "v": [1]}))
    with pytest.raises(InvalidRecordsError, match="more than once"):
        agg.update(pa.table([pa.array([1], pa.int32()), pa.array([1]), pa.array([1])], names=["k", "v", "v"]))
    with pytest.raises(TypeError):
        agg.update([{"k": 1, "v": 1}])
    assert agg.result().to_pylist() == [{"k": 1, "count": 1, "v_sum": 1}]


def test_specs_are_cached_but_arguments_still_checked() -> None:
    # The same arguments share one validated spec; arguments validation rejects, or
    # that only compare equal to cached ones (1 == True), are still rejected.
    by = ["k"]
    first = Aggregator(by=by, sum="v")
    by.append("x")  # the caller's list changing later changes nothing
    second = Aggregator(by=["k"], sum="v")
    assert first._s is second._s
    assert first._s.by == ["k"]
    with pytest.raises(ConfigError, match="count"):
        Aggregator(by=["k"], sum="v", count=1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="by"):
        Aggregator(by=("k", "k"), sum="v")
    table = pa.table({"k": ["a", "b", "a"], "v": [1, 2, 3], "x": [0, 0, 0]})
    for agg in (first, second):  # the second reuses the first one's plan for this schema
        agg.update(table)
        assert agg.result().to_pylist() == [
            {"k": "a", "count": 2, "v_sum": 4},
            {"k": "b", "count": 1, "v_sum": 2},
        ]


def test_group_table_update_batch_checks_its_arguments() -> None:
    from streamcore import _aggregate

    table = _aggregate.GroupTable(["k"], [pa.utf8()], ["v"], [pa.int64()], [_aggregate.WANT_SUM])
    batch = pa.record_batch({"v": [1, 2], "k": ["a", "a"]})
    with pytest.raises(TypeError, match="RecordBatch"):
        table.update_batch(pa.Table.from_batches([batch]), [1], [0])
    with pytest.raises(ValueError, match="one column index"):
        table.update_batch(batch, [1], [])
    with pytest.raises(InvalidRecordsError, match=r"'k' has type int64"):
        table.update_batch(batch, [0], [0])
    table.update_batch(batch, [1], [0])
    assert len(table) == 1


def test_merge_rejects_other_specs_and_types() -> None:
    agg = Aggregator(by=["k"], sum=["v"])
    agg.update(pa.table({"k": [1], "v": [1]}))
    with pytest.raises(ValueError, match="different specs"):
        agg.merge(Aggregator(by=["k"], sum=["v"], count=False))
    other = Aggregator(by=["k"], sum=["v"])
    other.update(pa.table({"k": ["a"], "v": [1]}))
    with pytest.raises(InvalidRecordsError, match="'k'"):
        agg.merge(other)
    with pytest.raises(TypeError):
        agg.merge("not an aggregator")  # type: ignore[arg-type]


def test_from_state_rejects_other_bytes() -> None:
    with pytest.raises(ValueError, match="not an Aggregator state"):
        Aggregator.from_state(b"garbage")
    sink = pa.BufferOutputStream()
    table = pa.table({"k": [1]})
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    with pytest.raises(ValueError, match="not an Aggregator state"):
        Aggregator.from_state(sink.getvalue().to_pybytes())


# --- window_start ----------------------------------------------------------------------


def floor_to(value: int, size: int) -> int:
    return (value // size) * size


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
@pytest.mark.parametrize("tz", [None, "UTC", "Europe/Paris"])
def test_window_start_timestamps_keep_unit_and_zone(unit: str, tz: str | None) -> None:
    per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[unit]
    raw = [0, 1, -1, 59 * per_second, 61 * per_second, -61 * per_second, None, 10**9 * per_second]
    dtype = pa.timestamp(unit, tz=tz)
    column = pa.array(raw, pa.int64()).cast(dtype)
    out = window_start(column, 60)
    assert out.type == dtype
    assert out.cast(pa.int64()).to_pylist() == [
        None if v is None else floor_to(v, 60 * per_second) for v in raw
    ]
    for size in (60.0, dt.timedelta(minutes=1)):
        assert window_start(column, size).equals(out)


def test_window_start_sub_second_sizes_and_slices() -> None:
    column = pa.array([1_234, 1_999, None, 2_000, -1], pa.timestamp("ms"))
    assert window_start(column, 0.5).cast(pa.int64()).to_pylist() == [1_000, 1_500, None, 2_000, -500]
    sliced = column.slice(1, 3)
    assert window_start(sliced, 1).cast(pa.int64()).to_pylist() == [1_000, None, 2_000]
    with pytest.raises(ValueError, match="whole number"):
        window_start(pa.array([1], pa.timestamp("s")), 0.5)


@pytest.mark.parametrize("type_name", ["int8", "int16", "int32", "int64", "uint8", "uint32", "uint64"])
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_window_start_integers(type_name: str, data: st.DataObject) -> None:
    dtype = getattr(pa, type_name)()
    unsigned = type_name.startswith("u")
    lo = 0 if unsigned else -(2 ** (dtype.bit_width - 1))
    hi = 2**dtype.bit_width - 1 if unsigned else 2 ** (dtype.bit_width - 1) - 1
    values = data.draw(st.lists(st.one_of(st.none(), st.integers(lo, hi)), max_size=50))
    size = data.draw(st.integers(1, hi))
    expected = [None if v is None else floor_to(v, size) for v in values]
    column = pa.array(values, dtype)
    if any(v is not None and v < lo for v in expected):
        with pytest.raises(OverflowError):
            window_start(column, size)
        return
    out = window_start(column, size)
    assert out.type == dtype
    assert out.to_pylist() == expected


def test_window_start_chunked_and_errors() -> None:
    chunked = pa.chunked_array([[5, 15], [], [25, None]], pa.int64())
    out = window_start(chunked, 10)
    assert isinstance(out, pa.ChunkedArray)
    assert out.num_chunks == 3
    assert out.to_pylist() == [0, 10, 20, None]
    assert window_start(pa.chunked_array([], pa.int32()), 10).type == pa.int32()
    with pytest.raises(TypeError):
        window_start(pa.array([1.5]), 1)
    with pytest.raises(TypeError):
        window_start([1, 2], 1)  # type: ignore[arg-type]
    for bad in (0, -5, 1.5, True):
        with pytest.raises(ValueError, match="size"):
            window_start(pa.array([1]), bad)
    with pytest.raises(TypeError):
        window_start(pa.array([1], pa.timestamp("s")), "60")
    with pytest.raises(OverflowError):
        window_start(pa.array([-(2**63)], pa.int64()), 3)


@pytest.mark.parametrize("key_type", [pa.utf8(), pa.large_utf8(), pa.int64(), pa.int32()])
def test_results_share_the_groups_memory_and_stay_as_they_were(key_type: pa.DataType) -> None:
    # A result holds the aggregator's arrays where their layout is the column's
    # (counts, 8-byte sums, minima, maxima, keys): whatever the aggregator does
    # next (updates that change those groups, copies, clear, being freed) must not
    # change a result already returned.
    def keys(ids: Sequence[int]) -> pa.Array:
        text = pa.types.is_string(key_type) or pa.types.is_large_string(key_type)
        return pa.array([f"key-{i}" if text else i for i in ids], key_type)

    def records(ids: Sequence[int], start: int) -> pa.Table:
        return pa.table(
            {
                "k": keys(ids),
                "v": pa.array([float(start + j) for j in range(len(ids))]),
                "n": pa.array([start + j for j in range(len(ids))], pa.int64()),
            }
        )

    agg = Aggregator(by="k", sum=["v", "n"], min=["v", "n"], max="n", mean="n")
    agg.update(records(range(20), 0))
    first = agg.result()
    expected = first.to_pylist()
    twin = agg.copy()
    twin.update(records(range(10, 40), 100))  # shares the blocks, then changes them
    agg.update(records(range(0, 50, 2), 1000))  # changes groups the result has
    second = agg.result()
    expected_second = second.to_pylist()
    assert first.to_pylist() == expected
    agg.clear()
    agg.update(records(range(5), 7))
    assert first.to_pylist() == expected and second.to_pylist() == expected_second
    del agg, twin
    gc.collect()
    first.validate(full=True)
    second.validate(full=True)
    assert first.to_pylist() == expected and second.to_pylist() == expected_second
    assert [r["k"] for r in expected] == keys(range(20)).to_pylist()
    assert [r["n_sum"] for r in expected_second][:3] == [1000, 1, 1003]


def test_tables_made_like_the_last_one_keep_their_own_spec() -> None:
    # A table made with the very objects of the last one copies its checked columns;
    # any other spec is checked and laid out afresh.
    key_names, key_types = ["k"], [pa.utf8()]
    names, flags = ["v"], [_aggregate.WANT_SUM | _aggregate.WANT_MIN]
    layout = [("count", -1), ("sum", 0), ("min", 0)]
    records = pa.record_batch({"k": ["a", "b", "a"], "v": pa.array([3, 1, 2], pa.int32())})
    for value_type, flag_set, want in (
        (pa.int32(), flags, [("a", 2, 5, 2), ("b", 1, 1, 1)]),
        (pa.int32(), flags, [("a", 2, 5, 2), ("b", 1, 1, 1)]),
        (pa.float64(), flags, [("a", 2, 5.0, 2.0), ("b", 1, 1.0, 1.0)]),
        (pa.int32(), [_aggregate.WANT_SUM], None),
    ):
        table = _aggregate.GroupTable(key_names, key_types, names, [value_type], flag_set)
        assert table.input_types() == [pa.utf8(), value_type]
        batch = records.set_column(1, "v", records["v"].cast(value_type))
        table.update_batch(batch, [0], [1])
        if want is None:
            with pytest.raises(ValueError, match="min of 'v' was not asked for"):
                table.result_batch(["k", "count", "v_sum", "v_min"], layout)
            continue
        result = table.result_batch(["k", "count", "v_sum", "v_min"], layout)
        assert [tuple(r.values()) for r in result.to_pylist()] == want
        assert result.schema.field("v_min").type == value_type
