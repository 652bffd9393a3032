"""Results and copies that share the table's blocks, checked against pyarrow's group_by.

A result (``result``, ``to_state``'s columns) holds the blocks of the table it
came from; copies share them too, and background folds copy them on their own
thread. Whatever happens next to any aggregator of the family (updates folded
in the call or in the background, copies of copies, merges, ``clear``, state
round trips, being dropped with a fold queued), every aggregator must equal
pyarrow's ``Table.group_by().aggregate()`` of what it folded, every result
already returned must stay as it was, and ``nbytes`` must be the documented
size of its groups (``nbytes(bound=True)`` never below it).
"""

from __future__ import annotations

import gc
import os
import random
import threading
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamcore import _aggregate
from streamcore.aggregate import Aggregator, handing

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs Linux")

BY = ["user", "n"]
SUM = ["value", "score"]
MIN = ["value", "score"]
MAX = ["value"]
MEAN = ["value"]
SCHEMA = pa.schema([("user", pa.utf8()), ("n", pa.int64()), ("value", pa.int64()), ("score", pa.float64())])


@pytest.fixture(autouse=True)
def background_on() -> Iterator[None]:
    previous = _aggregate.background_folds(True)
    yield
    _aggregate.background_folds(previous)


def spec() -> Aggregator:
    return Aggregator(by=BY, sum=SUM, min=MIN, max=MAX, mean=MEAN)


def make_batch(rng: random.Random, rows: int, keys: int) -> pa.RecordBatch:
    # Integer-valued floats: sums are exact in any order.
    return pa.record_batch(
        [
            pa.array([None if rng.random() < 0.05 else f"user-{rng.randrange(keys)}" for _ in range(rows)]),
            pa.array([None if rng.random() < 0.05 else rng.randrange(3) for _ in range(rows)], pa.int64()),
            pa.array(
                [None if rng.random() < 0.1 else rng.randrange(-1000, 1000) for _ in range(rows)], pa.int64()
            ),
            pa.array([None if rng.random() < 0.1 else float(rng.randrange(-50, 50)) for _ in range(rows)]),
        ],
        schema=SCHEMA,
    )


def expected_rows(folded: list[pa.RecordBatch]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """pyarrow's aggregates of everything folded, by key."""
    if not folded:
        return {}
    table = pa.Table.from_batches(folded, schema=SCHEMA)
    aggregations: list[tuple[Any, str]] = [([], "count_all")]
    names = ["count"]
    for op, cols in (("sum", SUM), ("min", MIN), ("max", MAX), ("mean", MEAN)):
        for col in cols:
            aggregations.append((col, op))
            names.append(f"{col}_{op}")
    out = table.group_by(BY, use_threads=False).aggregate(aggregations)
    pa_names = ["count_all"] + [f"{col}_{op}" for col, op in aggregations[1:]]
    got: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in out.to_pylist():
        got[tuple(row[k] for k in BY)] = {
            name: row[pa_name] for name, pa_name in zip(names, pa_names, strict=True)
        }
    return got


def by_key(result: pa.Table) -> dict[tuple[Any, ...], dict[str, Any]]:
    rows = result.to_pylist()
    out = {tuple(r[k] for k in BY): {n: v for n, v in r.items() if n not in BY} for r in rows}
    assert len(out) == len(rows), "a group appears twice"
    return out


def size_of(folded: list[pa.RecordBatch]) -> int:
    """The documented nbytes: per group count and hash (16), per key column its value
    and null flag (9), per value column its null count and each accumulator (8 each),
    plus the key bytes."""
    groups = expected_rows(folded)
    # value (int64): null count, sum, min, max and the float sum of its mean;
    # score (float64): null count, sum (also its mean's, were one asked), min.
    per_group = 16 + 9 * len(BY) + 8 * 5 + 8 * 3
    return len(groups) * per_group + sum(len((key[0] or "").encode()) for key in groups)


class Family:
    """Aggregators sharing blocks, each with what it folded, and the results returned."""

    def __init__(self) -> None:
        self.aggs: list[tuple[Aggregator, list[pa.RecordBatch]]] = [(spec(), [])]
        self.kept: list[tuple[pa.Table, list[dict[str, Any]]]] = []

    def step(self, op: str, r: int, pool: list[pa.RecordBatch]) -> None:
        aggs = self.aggs
        i = r % len(aggs)
        agg, folded = aggs[i]
        records = pool[(r >> 8) % len(pool)]
        if op == "fold":  # as a handler's records: may fold in the background
            with handing(records):
                agg.update(records)
            folded.append(records)
        elif op == "update":  # in the call
            agg.update(records)
            folded.append(records)
        elif op == "copy":
            aggs.append((agg.copy(), list(folded)))
        elif op == "result":
            result = agg.result()
            self.kept.append((result, result.to_pylist()))
            assert by_key(result) == expected_rows(folded)
        elif op == "state":
            aggs.append((Aggregator.from_state(agg.to_state()), list(folded)))
        elif op == "merge":
            other, more = aggs[(r >> 4) % len(aggs)]
            agg.merge(other)
            folded.extend(list(more))
        elif op == "clear":
            agg.clear()
            folded.clear()
        elif op == "drop" and len(aggs) > 1:
            aggs.pop(i)
        elif op == "nbytes":
            bound = agg._nbytes_bound()
            size = agg.nbytes
            assert size == size_of(folded)
            assert bound >= size
        elif op == "len":
            assert len(agg) == len(expected_rows(folded))

    def check(self) -> None:
        for agg, folded in self.aggs:
            assert by_key(agg.result()) == expected_rows(folded)
        for result, rows in self.kept:
            result.validate(full=True)
            assert result.to_pylist() == rows


OPS = ["fold"] * 4 + ["update", "copy", "result", "state", "merge", "clear", "drop", "nbytes", "len"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    steps=st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 2**20)), max_size=40),
)
def test_families_match_pyarrow_and_results_never_change(seed: int, steps: list[tuple[str, int]]) -> None:
    rng = random.Random(seed)
    pool = [make_batch(rng, rng.choice([1, 5, 60, 400]), rng.choice([3, 40, 500])) for _ in range(6)]
    family = Family()
    for op, r in steps:
        family.step(op, r, pool)
    family.check()
    # Results outlive every aggregator they came from.
    family.aggs.clear()
    gc.collect()
    family.check()


def test_families_on_threads_sharing_one_root() -> None:
    # Each thread grows its own family from a copy of one root (blocks shared across
    # threads) while the others fold, copy, merge and drop theirs.
    rng = random.Random(7)
    pool = [make_batch(rng, rng.choice([1, 30, 300, 2000]), rng.choice([5, 200, 3000])) for _ in range(8)]
    root = spec()
    root.update(pool[0])
    families: list[Family] = []
    for _ in range(4):
        family = Family()
        family.aggs = [(root.copy(), [pool[0]])]
        families.append(family)
    plans = [[(rng.choice(OPS), rng.randrange(2**20)) for _ in range(150)] for _ in families]
    errors: list[BaseException] = []
    start = threading.Barrier(len(families))

    def work(family: Family, plan: list[tuple[str, int]]) -> None:
        try:
            start.wait()
            for op, r in plan:
                family.step(op, r, pool)
            family.check()
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(f, p)) for f, p in zip(families, plans, strict=True)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(300)
    assert not any(w.is_alive() for w in workers), "a worker hangs"
    assert not errors, errors
    assert by_key(root.result()) == expected_rows([pool[0]])
    del root
    for family in families:
        family.aggs.clear()
    gc.collect()
    for family in families:
        family.check()


def test_results_outlive_a_table_dropped_with_its_fold_queued() -> None:
    # The result holds the blocks the queued fold was to copy from (its sources):
    # dropping the fold lets go of them once, the result keeps them.
    rng = random.Random(11)
    first, second = make_batch(rng, 300, 40), make_batch(rng, 2000, 800)
    want_first, want_both = expected_rows([first]), expected_rows([first, second])
    for _ in range(15):
        agg = spec()
        agg.update(first)
        twin = agg.copy()
        result = agg.result()
        rows = result.to_pylist()
        for table in (agg, twin):
            with handing(second):
                table.update(second)  # every block shared: the copies are left to the fold
        other = twin.result()  # takes twin's fold back or waits for it
        assert by_key(other) == want_both
        del agg, twin  # agg's fold is likely still queued
        gc.collect()
        assert result.to_pylist() == rows
        assert by_key(result) == want_first
