"""Latency from ``put`` to handler start at a fixed offered rate, on the system clock.

A producer (this thread) puts ``PUT_RECORDS`` records every
``PUT_RECORDS / RATE`` seconds (20,000 records/s in puts of 100) for
``SECONDS`` (quick: ``QUICK_SECONDS``), on a fixed schedule (a late put does not
shift the ones after it). Each record carries ``t_put``, ``time.perf_counter_ns()``
read just before its ``put``. streamcore: ``MemoryStream(shards=8)``, an App
started with ``app.start()``, ``batch_window=0``; the handler reads the clock
first thing and keeps ``now - t_put`` of every record. Records put during the
first ``WARMUP`` seconds are delivered but not counted in the percentiles.

Baseline, same records and schedule: a plain-Python consumer with one thread
and one ``queue.SimpleQueue`` per shard; the producer hashes each key with
xxhash, appends the row to its shard's list and hands every non-empty list to
that shard's queue; a consumer thread takes what is queued (up to the batch
size) and calls the same kind of handler.

Checksum: records delivered and the sum of their values, on both sides.
"""

from __future__ import annotations

import queue
import threading
import time
from bisect import bisect_right
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import xxhash

import streamcore as sc
from streamcore import _partition
from streamcore.benches.common import SEED, SHARDS, result, target, user_keys

RATE = 20_000
PUT_RECORDS = 100
SECONDS = 4.0
QUICK_SECONDS = 1.0
WARMUP = 0.25
BATCH_SIZE = 100
DRAIN_TIMEOUT = 30.0
PERCENTILES = {"p50": 0.5, "p99": 0.99, "p99.9": 0.999}
TARGET_P99_MS = 10.0
TARGET_OFFERED = 0.95  # of RATE: the producer (puts included) keeps the schedule
WARM_PUTS = round(WARMUP * RATE / PUT_RECORDS)
NOT_YET = 2**62  # a t_put no record reaches: nothing is counted before the warm-up ends


class Recorder:
    """Latencies (ns) of every record delivered, and the sum of their values."""

    def __init__(self, first_counted_ns: int) -> None:
        self.first_counted_ns = first_counted_ns
        self.latencies: list[pa.Array] = []
        self.records = 0
        self.value_sum = 0.0
        self.lock = threading.Lock()

    def percentiles_ms(self) -> dict[str, float]:
        if not self.latencies:
            return dict.fromkeys(PERCENTILES, float("nan"))
        lat = pa.chunked_array(self.latencies, pa.int64())
        got = pc.quantile(lat, q=list(PERCENTILES.values())).to_pylist()
        return {name: value / 1e6 for name, value in zip(PERCENTILES, got, strict=True)}


def make_puts(seconds: float) -> list[tuple[pa.Array, pa.Array]]:
    """The (keys, values) of every put, made before the clock starts."""
    puts = round(seconds * RATE / PUT_RECORDS)
    n = puts * PUT_RECORDS
    keys = user_keys(n, seed=SEED + 11)
    values = pc.round(pc.multiply(pc.random(n, initializer=SEED + 12), 100.0), 2)
    step = PUT_RECORDS
    return [(keys.slice(i * step, step), values.slice(i * step, step)) for i in range(puts)]


def produce(puts: list[tuple[pa.Array, pa.Array]], put: Callable[[pa.Array, pa.Array, int], None]) -> float:
    """Call ``put(keys, values, t_put_ns)`` on schedule; returns the offered rate achieved."""
    interval = PUT_RECORDS / RATE
    started = time.perf_counter()
    for i, (keys, values) in enumerate(puts):
        due = started + i * interval
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        put(keys, values, time.perf_counter_ns())
    return len(puts) * PUT_RECORDS / (time.perf_counter() - started)


def wait_for(done: Callable[[], int], total: int) -> None:
    deadline = time.perf_counter() + DRAIN_TIMEOUT
    while done() < total:
        if time.perf_counter() > deadline:
            raise AssertionError(f"only {done()} of {total} records delivered in {DRAIN_TIMEOUT} s")
        time.sleep(0.005)


def counting(put: Callable[[pa.Array, pa.Array, int], None], recorder: Recorder, warm_puts: int) -> Callable:
    """``put`` that starts the recorder's counting at the first put after the warm-up."""
    calls = 0

    def wrapped(keys: pa.Array, values: pa.Array, t_put: int) -> None:
        nonlocal calls
        if calls == warm_puts:
            recorder.first_counted_ns = t_put
        calls += 1
        put(keys, values, t_put)

    return wrapped


def streamcore_side(puts: list[tuple[pa.Array, pa.Array]]) -> tuple[Recorder, float]:
    total = len(puts) * PUT_RECORDS
    recorder = Recorder(NOT_YET)
    stream = sc.MemoryStream(shards=SHARDS, name="latency")

    def handle(batch: sc.Batch) -> None:
        now = time.perf_counter_ns()
        records = batch.records
        t_put = records.column("t_put")
        latency = pc.subtract(pa.scalar(now, pa.int64()), t_put)
        counted = pc.filter(latency, pc.greater_equal(t_put, recorder.first_counted_ns))
        value = pc.sum(records.column("value")).as_py() or 0.0
        with recorder.lock:
            recorder.latencies.append(counted)
            recorder.records += records.num_rows
            recorder.value_sum += value

    def put(keys: pa.Array, values: pa.Array, t_put: int) -> None:
        stamps = pa.repeat(pa.scalar(t_put, pa.int64()), len(keys))
        stream.put(pa.table({"key": keys, "value": values, "t_put": stamps}))

    with sc.App() as app:
        app.consumer(stream, name="latency", batch_size=BATCH_SIZE, batch_window=0.0)(handle)
        app.start()
        offered = produce(puts, counting(put, recorder, WARM_PUTS))
        wait_for(lambda: recorder.records, total)
        app.stop()
    return recorder, offered


def python_side(puts: list[tuple[pa.Array, pa.Array]]) -> tuple[Recorder, float]:
    total = len(puts) * PUT_RECORDS
    recorder = Recorder(NOT_YET)
    starts = _partition.even_ranges(SHARDS)
    digest = xxhash.xxh64_intdigest
    queues: list[queue.SimpleQueue] = [queue.SimpleQueue() for _ in range(SHARDS)]
    stop = object()

    def handle(rows: list[tuple[str, float, int]]) -> None:
        now = time.perf_counter_ns()
        first = recorder.first_counted_ns
        latency = [now - t for _, _, t in rows if t >= first]
        value = sum(v for _, v, _ in rows)
        with recorder.lock:
            recorder.latencies.append(pa.array(latency, pa.int64()))
            recorder.records += len(rows)
            recorder.value_sum += value

    def consumer(q: queue.SimpleQueue) -> None:
        while True:
            item = q.get()
            if item is stop:
                return
            rows = list(item)
            while len(rows) < BATCH_SIZE:
                try:
                    more = q.get_nowait()
                except queue.Empty:
                    break
                if more is stop:
                    q.put(stop)
                    break
                rows.extend(more)
            handle(rows)

    threads = [threading.Thread(target=consumer, args=(q,), daemon=True) for q in queues]
    for thread in threads:
        thread.start()

    def put(keys: pa.Array, values: pa.Array, t_put: int) -> None:
        pending: list[list[tuple[str, float, int]]] = [[] for _ in range(SHARDS)]
        for key, value in zip(keys.to_pylist(), values.to_pylist(), strict=True):
            pending[bisect_right(starts, digest(key.encode())) - 1].append((key, value, t_put))
        for q, rows in zip(queues, pending, strict=True):
            if rows:
                q.put(rows)

    offered = produce(puts, counting(put, recorder, WARM_PUTS))
    wait_for(lambda: recorder.records, total)
    for q in queues:
        q.put(stop)
    for thread in threads:
        thread.join()
    return recorder, offered


def run(quick: bool) -> dict[str, Any]:
    seconds = QUICK_SECONDS if quick else SECONDS
    puts = make_puts(seconds)
    total = len(puts) * PUT_RECORDS

    ours, offered = streamcore_side(puts)
    theirs, baseline_offered = python_side(puts)
    p_ours = ours.percentiles_ms()
    p_theirs = theirs.percentiles_ms()
    counted = sum(len(a) for a in ours.latencies)
    return result(
        "latency",
        description=(
            f"put -> handler start, {RATE:,} rec/s offered in puts of {PUT_RECORDS} for {seconds:g} s, "
            f"{SHARDS} shards, batch_window=0, system clock, app.start(); p99 shown"
        ),
        unit="ms",
        throughput=p_ours["p99"],
        baseline=p_theirs["p99"],
        baseline_description=("Python: xxhash partition per put, a SimpleQueue + consumer thread per shard"),
        targets=[
            target("p99 latency", p_ours["p99"], "<=", TARGET_P99_MS, "ms"),
            target("offered rate kept", offered, ">=", TARGET_OFFERED * RATE, "rec/s"),
        ],
        figures={
            "records": total,
            "records_counted": counted,
            "offered_rec_per_s": offered,
            "baseline_offered_rec_per_s": baseline_offered,
            **{f"{name}_ms": value for name, value in p_ours.items()},
            **{f"baseline_{name}_ms": value for name, value in p_theirs.items()},
        },
        params={
            "rate": RATE,
            "put_records": PUT_RECORDS,
            "seconds": seconds,
            "warmup_s": WARMUP,
            "shards": SHARDS,
            "batch_size": BATCH_SIZE,
            "quick": quick,
        },
        checksum={"records": ours.records, "value_sum": ours.value_sum},
        baseline_checksum={"records": theirs.records, "value_sum": theirs.value_sum},
        lower_is_better=True,
        series={
            "bars": {"streamcore p99": p_ours["p99"], "Python threads p99": p_theirs["p99"]},
            "latency": {"streamcore": p_ours, "Python threads + queues": p_theirs},
        },
    )
