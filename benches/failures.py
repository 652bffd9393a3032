"""Failures: poison records isolated by bisection, and what the machinery costs when nothing fails.

``RECORDS`` records (Zipf user keys, a value, and boolean ``poison`` columns:
0.1% and 1% of the records, at seeded random rows) in ``MemoryStream(shards=8)``
on a ``VirtualClock``. The handler raises when its batch holds a poison record
(one ``pyarrow.compute.any`` per batch). Options: ``bisect_on_error=True,
max_retries=2, on_failure=<collect>``, ``batch_size=1000``.

Per poison rate: records/s of the whole run, and the invocations each poison
record costs, ``(invocations - invocations of a clean run) / poison records``.
Bisection (model M1) takes about ``2 * log2(batch_size)`` invocations to
isolate one record, then ``max_retries`` more before it goes to on_failure, so
the target is ``<= 2 * ceil(log2(batch_size)) + max_retries + 2``; the 0.1%
run is repeated at ``batch_size=100`` to show the growth is logarithmic.

Headline: the same options on a stream with no poison at all (the failure
machinery armed, never used) against the plain consumer (default options),
same handler: the ratio must be >= 0.95 (within 5%). Both are the best of
``REPEAT`` alternated runs.

Checksum: per poison rate, records done, records sent to on_failure and the
sum of their values, against the same figures computed from the data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

import streamcore as sc
from streamcore.benches.common import SEED, SHARDS, result, target, user_keys

RECORDS = 500_000
QUICK_RECORDS = 50_000
BATCH_SIZE = 1000
SMALL_BATCH_SIZE = 100
MAX_RETRIES = 2
RATES = {"0.1%": 0.001, "1%": 0.01}
REPEAT = 15  # clean runs take tens of milliseconds: the best of many, alternated
QUICK_REPEAT = 7
TARGET_CLEAN_RATIO = 0.95


def invocation_bound(batch_size: int) -> int:
    """Invocations one isolated poison record may cost: bisect levels twice, then the retries."""
    return 2 * math.ceil(math.log2(batch_size)) + MAX_RETRIES + 2


def make_records(n: int) -> pa.Table:
    draws = pc.random(n, initializer=SEED + 7)
    columns: dict[str, Any] = {
        "key": user_keys(n),
        "value": pc.round(pc.multiply(pc.random(n, initializer=SEED + 8), 100.0), 2),
        "clean": pa.nulls(n, pa.bool_()).fill_null(False),
    }
    for label, rate in RATES.items():
        columns[f"poison_{label}"] = pc.less(draws, rate)
    return pa.table(columns)


def poison_handler(column: str) -> Callable[[sc.Batch], None]:
    def handle(batch: sc.Batch) -> None:
        if pc.any(batch.records.column(column)).as_py():
            raise ValueError("poison record")

    return handle


def consume(
    stream: sc.MemoryStream, clock: sc.VirtualClock, column: str, batch_size: int, *, armed: bool
) -> tuple[float, dict[str, int | float], list[sc.FailedBatch]]:
    """One fresh App over the whole stream: seconds, metrics, what went to on_failure."""
    failed: list[sc.FailedBatch] = []
    options: dict[str, Any] = {"batch_size": batch_size}
    if armed:
        options.update(bisect_on_error=True, max_retries=MAX_RETRIES, on_failure=failed.append)
    with sc.App(clock=clock) as app:
        app.consumer(stream, name="consumer", **options)(poison_handler(column))
        started = time.perf_counter()
        app.run(until_idle=True)
        seconds = time.perf_counter() - started
        metrics = app.metrics()
    return seconds, metrics, failed


def run(quick: bool) -> dict[str, Any]:
    n = QUICK_RECORDS if quick else RECORDS
    repeat = QUICK_REPEAT if quick else REPEAT
    table = make_records(n)
    clock = sc.VirtualClock()
    stream = sc.MemoryStream(shards=SHARDS, clock=clock)
    stream.put(table)

    # The failure machinery armed but unused, against the plain consumer (alternated).
    plain_s = armed_s = float("inf")
    clean_invocations = {}
    for _ in range(repeat):
        seconds, metrics, _ = consume(stream, clock, "clean", BATCH_SIZE, armed=False)
        plain_s = min(plain_s, seconds)
        seconds, metrics, failed = consume(stream, clock, "clean", BATCH_SIZE, armed=True)
        armed_s = min(armed_s, seconds)
        if failed or metrics["records_done"] != n or metrics["errors"]:
            raise AssertionError(f"a clean run failed: {metrics}")
        clean_invocations[BATCH_SIZE] = int(metrics["invocations"])
    _, metrics, _ = consume(stream, clock, "clean", SMALL_BATCH_SIZE, armed=True)
    clean_invocations[SMALL_BATCH_SIZE] = int(metrics["invocations"])

    figures: dict[str, float | int] = {
        "records": n,
        "plain_seconds": plain_s,
        "armed_seconds": armed_s,
        "plain_records_per_s": n / plain_s,
        "armed_records_per_s": n / armed_s,
        "clean_us_per_invocation": armed_s / clean_invocations[BATCH_SIZE] * 1e6,
    }
    targets = [target("clean run, armed / plain", plain_s / armed_s, ">=", TARGET_CLEAN_RATIO, "x")]
    ours: dict[str, int | float] = {}
    expected: dict[str, int | float] = {}
    bars: dict[str, float] = {}
    runs = [(label, BATCH_SIZE) for label in RATES] + [("0.1%", SMALL_BATCH_SIZE)]
    for label, batch_size in runs:
        column = f"poison_{label}"
        poison = table[column]
        poisons = int(pc.sum(pc.cast(poison, pa.int64())).as_py() or 0)
        seconds, metrics, failed = consume(stream, clock, column, batch_size, armed=True)
        tag = f"{label}@{batch_size}"
        per_poison = (metrics["invocations"] - clean_invocations[batch_size]) / max(poisons, 1)
        figures[f"{tag}_poison_records"] = poisons
        figures[f"{tag}_records_per_s"] = n / seconds
        figures[f"{tag}_seconds"] = seconds
        figures[f"{tag}_invocations"] = int(metrics["invocations"])
        figures[f"{tag}_invocations_per_poison"] = per_poison
        figures[f"{tag}_us_per_invocation"] = seconds / metrics["invocations"] * 1e6
        figures[f"{tag}_bisects"] = int(metrics["bisects"])
        figures[f"{tag}_retries"] = int(metrics["retries"])
        bars[f"poison {tag}"] = n / seconds
        targets.append(
            target(f"invocations/poison {tag}", per_poison, "<=", invocation_bound(batch_size), "inv")
        )
        dead_value = sum(pc.sum(f.records.column("value")).as_py() or 0.0 for f in failed)
        ours[f"{tag}_done"] = int(metrics["records_done"])
        ours[f"{tag}_dead_lettered"] = sum(f.size for f in failed)
        ours[f"{tag}_dead_value_sum"] = float(dead_value)
        expected[f"{tag}_done"] = n - poisons
        expected[f"{tag}_dead_lettered"] = poisons
        expected[f"{tag}_dead_value_sum"] = float(pc.sum(pc.filter(table["value"], poison)).as_py() or 0.0)

    return result(
        "failures",
        description=(
            f"{n:,} records, {SHARDS} shards, VirtualClock, batch_size {BATCH_SIZE}, bisect_on_error, "
            f"max_retries={MAX_RETRIES}, on_failure: no poison (headline), then 0.1% and 1% poison"
        ),
        unit="rec/s",
        throughput=n / armed_s,
        baseline=n / plain_s,
        baseline_description="the same handler and records with default options (no failure policy)",
        targets=targets,
        figures=figures,
        params={
            "records": n,
            "shards": SHARDS,
            "batch_size": BATCH_SIZE,
            "small_batch_size": SMALL_BATCH_SIZE,
            "max_retries": MAX_RETRIES,
            "poison_rates": RATES,
            "repeat": repeat,
            "quick": quick,
        },
        checksum=ours,
        baseline_checksum=expected,
        series={"bars": {"armed, no poison": n / armed_s, "plain": n / plain_s, **bars}},
    )
