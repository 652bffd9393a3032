"""Partitioning string keys: the native path of ``MemoryStream.put`` vs a Python loop over xxhash.

Native: ``_partition.assign_keys`` (XXH64 of every key hashed in the pass that
shards and counts the rows, then a stable counting sort: each row's shard and
seq, and the seqs in shard order), exactly what ``MemoryStream.put`` runs;
both split their rows across two threads (the default on two CPUs or more;
the one-thread time is a figure). Baseline: a
Python loop that hashes each key with ``xxhash.xxh64_intdigest(s.encode())``,
picks its shard from the same hash ranges and appends the row index to that
shard's list. Both produce the same grouping: rows per shard and the row
order are the checksum.

Figures also time whole ``MemoryStream.put`` calls of clickstream events (utf8
``user_id`` key, four columns) at 30,000 and 2,000 rows a put, best of many.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from typing import Any

import pyarrow as pa
import xxhash

import streamcore as sc
from streamcore import _arrow, _partition
from streamcore.benches.common import SHARDS, best_seconds, result, target, user_keys
from streamcore.demo import make_events

KEYS = 2_000_000
QUICK_KEYS = 200_000
REPEAT = 3
TARGET_RATIO = 30.0
TARGET_NATIVE_KEYS_PER_S = 40e6
PUT_ROWS = (30_000, 2_000)
PUT_EVENTS = 600_000  # rows put per timing, in puts of PUT_ROWS rows
QUICK_PUT_EVENTS = 120_000


def python_partition(keys: list[str], starts: list[int]) -> list[list[int]]:
    """Row indices per shard, in arrival order: one xxhash call and one append per key."""
    digest = xxhash.xxh64_intdigest
    shards: list[list[int]] = [[] for _ in starts]
    for i, key in enumerate(keys):
        shards[bisect_right(starts, digest(key.encode())) - 1].append(i)
    return shards


def grouping_checksum(counts: list[int], order: pa.Array) -> dict[str, int]:
    """Rows per shard and an XXH64 digest of the row order (as int64): equal iff the grouping is."""
    rows = order.cast(pa.int64())
    digest = xxhash.xxh64_intdigest(
        rows.buffers()[1].to_pybytes()[rows.offset * 8 : (rows.offset + len(rows)) * 8]
    )
    return {"order_xxh64": digest, **{f"shard_{i}": count for i, count in enumerate(counts)}}


def put_seconds(events: pa.Table, rows: int, repeat: int) -> float:
    """Best seconds per ``put`` of ``rows`` events, each timing a fresh stream taking all of ``events``."""
    slices = [events.slice(offset, rows) for offset in range(0, events.num_rows - rows + 1, rows)]
    best = float("inf")
    for _ in range(repeat):
        stream = sc.MemoryStream(shards=SHARDS)
        started = time.perf_counter()
        for part in slices:
            stream.put(part, key="user_id")
        best = min(best, (time.perf_counter() - started) / len(slices))
        del stream
    return best


def run(quick: bool) -> dict[str, Any]:
    n = QUICK_KEYS if quick else KEYS
    keys = user_keys(n)
    py_keys = keys.to_pylist()
    starts = _partition.even_ranges(SHARDS)
    ids = list(range(SHARDS))
    firsts = [0] * SHARDS

    def native() -> tuple[Any, list[int]]:
        order, counts, *_ = _partition.assign_keys(keys, starts, ids, firsts)
        return order, counts

    def baseline() -> object:
        return python_partition(py_keys, starts)

    order, counts = native()  # also warms up
    expected = python_partition(py_keys, starts)
    native_sum = grouping_checksum(counts, order)
    baseline_sum = grouping_checksum(
        [len(rows) for rows in expected], pa.array([i for rows in expected for i in rows])
    )

    native_s = best_seconds(native, REPEAT)
    previous = _arrow.parallel_config(threads=1)
    try:
        native_one_thread_s = best_seconds(native, REPEAT)
    finally:
        _arrow.parallel_config(*previous)
    baseline_s = best_seconds(baseline, REPEAT)
    events = make_events(QUICK_PUT_EVENTS if quick else PUT_EVENTS)
    put_us = {rows: put_seconds(events, rows, REPEAT * 3) * 1e6 for rows in PUT_ROWS}
    native_rate = n / native_s
    baseline_rate = n / baseline_s
    ratio = native_rate / baseline_rate
    return result(
        "partition",
        description=f"XXH64 + shard by hash range + stable sort, {n:,} utf8 keys, {SHARDS} shards",
        unit="keys/s",
        throughput=native_rate,
        baseline=baseline_rate,
        baseline_description="Python loop: xxh64_intdigest(s.encode()), bisect, list.append",
        targets=[
            target("ratio", ratio, ">=", TARGET_RATIO, "x"),
            target("native keys/s", native_rate, ">=", TARGET_NATIVE_KEYS_PER_S, "keys/s"),
        ],
        figures={
            "keys": n,
            "native_seconds": native_s,
            "native_seconds_one_thread": native_one_thread_s,
            "threads": previous[0],
            "baseline_seconds": baseline_s,
            "native_ns_per_key": native_s / n * 1e9,
            "baseline_ns_per_key": baseline_s / n * 1e9,
            **{f"put_us_{rows}_rows": us for rows, us in put_us.items()},
        },
        params={"keys": n, "shards": SHARDS, "repeat": REPEAT, "quick": quick},
        checksum=native_sum,
        baseline_checksum=baseline_sum,
        series={"bars": {"streamcore": native_rate, "Python xxhash loop": baseline_rate}},
    )
