"""Framework cost end to end with a no-op handler: what streamcore adds per record and per batch.

``RECORDS`` records are put into ``MemoryStream(shards=8)`` on a ``VirtualClock``;
then, for each batch size, a fresh App consumes them all with a handler that
does nothing, and only ``app.run(until_idle=True)`` is timed (best of
``REPEAT`` Apps; the baseline: best of ``BASELINE_REPEAT``). Every App reads
the same stored records from TRIM_HORIZON.

Baseline: a plain-Python consumer of the same keys that does the partition
itself (xxhash per key, shard by hash range), collects row indices into
per-shard lists of ``BATCH_SIZE`` and calls a no-op function per full list.

Two batch sizes separate the costs: at ``batch_size=1000`` the time per record
is mostly per-record work, at ``batch_size=100`` there are ten times as many
invocations. ``fixed_us_per_batch`` and ``marginal_ns_per_record`` are the
straight-line fit ``t = records * r + batches * b`` through both runs. The
run is repeated at batch sizes 500 and 5000 too, for the plot of throughput
against batch size.

Checksum: records done and records per shard (from the checkpoints), against
the records per shard the Python consumer handed to its handler.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import xxhash

import streamcore as sc
from streamcore import _partition
from streamcore.benches.common import SEED, SHARDS, best_seconds, result, target, user_keys

RECORDS = 2_000_000
QUICK_RECORDS = 200_000
BATCH_SIZE = 1000
SMALL_BATCH_SIZE = 100
REPEAT = 5  # framework runs are short (well under a second each): take the best of more
BASELINE_REPEAT = 3
SWEEP_BATCH_SIZES = (100, 500, 1000, 5000)  # throughput against batch size (a plot)
CONCURRENCY = 1
TARGET_NS_PER_RECORD = 100.0
TARGET_US_PER_BATCH = 20.0


def noop(batch: object) -> None:
    """The handler: does nothing, so all that is timed is the framework."""


def python_consumer(
    keys: list[str],
    starts: list[int],
    batch_size: int,
    handler: Callable[[list[int]], None],
    per_shard: list[Callable[[list[int]], None]] | None = None,
) -> int:
    """Partition ``keys`` with xxhash in Python, call ``handler`` per full batch; return batches.

    ``per_shard`` (untimed, for the checksum): one handler per shard instead.
    """
    digest = xxhash.xxh64_intdigest
    pending: list[list[int]] = [[] for _ in starts]
    handlers = per_shard or [handler] * len(starts)
    batches = 0
    for i, key in enumerate(keys):
        shard = bisect_right(starts, digest(key.encode())) - 1
        rows = pending[shard]
        rows.append(i)
        if len(rows) == batch_size:
            handlers[shard](rows)
            pending[shard] = []
            batches += 1
    for shard, rows in enumerate(pending):
        if rows:
            handlers[shard](rows)
            batches += 1
    return batches


def consume(
    stream: sc.MemoryStream, clock: sc.VirtualClock, batch_size: int, n: int, repeat: int = REPEAT
) -> tuple[float, int, dict[str, int]]:
    """Best wall seconds of ``app.run(until_idle=True)`` over ``repeat`` fresh Apps, batches, checksum.

    The checksum: records done, and records per shard (from the checkpoints).
    """
    invocations = 0
    best = float("inf")
    for _ in range(repeat):
        # A no-op handler is CPU-bound Python: one invocation at a time (README, "Threads");
        # more threads taking turns at the GIL would measure the GIL, not streamcore.
        with sc.App(clock=clock, concurrency=CONCURRENCY) as app:
            app.consumer(stream, name="noop", batch_size=batch_size)(noop)
            seconds = best_seconds(lambda app=app: app.run(until_idle=True), repeat=1)
            metrics = app.metrics()
            checkpoints = app.checkpoints()["noop"]
        if metrics["records_done"] != n or metrics["errors"]:
            raise AssertionError(f"consumed {metrics['records_done']} of {n} records: {metrics}")
        invocations = int(metrics["invocations"])
        best = min(best, seconds)
    per_shard = {f"shard_{i}": (-1 if seq is None else seq) + 1 for i, seq in sorted(checkpoints.items())}
    return best, invocations, {"records": int(metrics["records_done"]), **per_shard}


def run(quick: bool) -> dict[str, Any]:
    n = QUICK_RECORDS if quick else RECORDS
    keys = user_keys(n)
    values = pc.round(pc.multiply(pc.random(n, initializer=SEED + 3), 100.0), 2)
    table = pa.table({"key": keys, "value": values})

    clock = sc.VirtualClock()
    stream = sc.MemoryStream(shards=SHARDS, clock=clock)
    put_s = best_seconds(lambda: stream.put(table), repeat=1)

    run_s, batches, ours = consume(stream, clock, BATCH_SIZE, n)
    small_run_s, small_batches, small_sum = consume(stream, clock, SMALL_BATCH_SIZE, n)
    sweep = {str(BATCH_SIZE): n / run_s, str(SMALL_BATCH_SIZE): n / small_run_s}
    for size in SWEEP_BATCH_SIZES:
        if str(size) not in sweep:
            seconds, _, other = consume(stream, clock, size, n, repeat=BASELINE_REPEAT)
            if other != ours:
                raise AssertionError(f"batch_size={size} consumed other records: {other} vs {ours}")
            sweep[str(size)] = n / seconds
    if small_sum != ours:
        raise AssertionError(f"batch_size={SMALL_BATCH_SIZE} consumed other records")

    py_keys = keys.to_pylist()
    starts = _partition.even_ranges(SHARDS)
    baseline_s = best_seconds(lambda: python_consumer(py_keys, starts, BATCH_SIZE, noop), BASELINE_REPEAT)
    per_shard = [0] * SHARDS

    def count(shard: int) -> Callable[[list[int]], None]:
        def handle(rows: list[int]) -> None:
            per_shard[shard] += len(rows)

        return handle

    python_consumer(py_keys, starts, BATCH_SIZE, noop, per_shard=[count(i) for i in range(SHARDS)])
    theirs = {"records": sum(per_shard), **{f"shard_{i}": c for i, c in enumerate(per_shard)}}

    ns_per_record = run_s / n * 1e9
    us_per_batch = run_s / batches * 1e6
    small_ns_per_record = small_run_s / n * 1e9
    small_us_per_batch = small_run_s / small_batches * 1e6
    fixed_s = (small_run_s - run_s) / (small_batches - batches) if small_batches > batches else 0.0
    marginal_s = (run_s - fixed_s * batches) / n
    throughput = n / run_s
    baseline_rate = n / baseline_s
    return result(
        "overhead",
        description=(
            f"no-op handler, {n:,} records, {SHARDS} shards, VirtualClock, app.run(until_idle=True)"
        ),
        unit="rec/s",
        throughput=throughput,
        baseline=baseline_rate,
        baseline_description=(
            f"Python consumer: xxhash partition + lists of {BATCH_SIZE} + no-op call per batch"
        ),
        targets=[
            target(f"ns/record @{BATCH_SIZE}", ns_per_record, "<=", TARGET_NS_PER_RECORD, "ns"),
            target(
                f"us/batch @{SMALL_BATCH_SIZE}",
                small_us_per_batch,
                "<=",
                TARGET_US_PER_BATCH,
                "us",
            ),
            target(f"us/batch @{BATCH_SIZE}", us_per_batch, "<=", TARGET_US_PER_BATCH, "us"),
        ],
        figures={
            "records": n,
            "put_seconds": put_s,
            "put_records_per_s": n / put_s,
            "run_seconds": run_s,
            "batches": batches,
            "ns_per_record": ns_per_record,
            "us_per_batch": us_per_batch,
            "small_run_seconds": small_run_s,
            "small_batches": small_batches,
            "small_ns_per_record": small_ns_per_record,
            "small_us_per_batch": small_us_per_batch,
            "fixed_us_per_batch": fixed_s * 1e6,
            "marginal_ns_per_record": marginal_s * 1e9,
            "end_to_end_records_per_s": n / (put_s + run_s),
            "end_to_end_ratio": (n / (put_s + run_s)) / baseline_rate,
            "baseline_seconds": baseline_s,
        },
        params={
            "records": n,
            "shards": SHARDS,
            "batch_sizes": [BATCH_SIZE, SMALL_BATCH_SIZE],
            "repeat": REPEAT,
            "baseline_repeat": BASELINE_REPEAT,
            "sweep_batch_sizes": list(SWEEP_BATCH_SIZES),
            "quick": quick,
        },
        checksum=ours,
        baseline_checksum=theirs,
        series={
            "bars": {"streamcore": throughput, "Python consumer": baseline_rate},
            "batch_size": {k: sweep[k] for k in sorted(sweep, key=int)},
            "batch_size_label": "no-op handler, consume only",
        },
    )
