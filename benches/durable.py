"""What durability costs: ``LocalLog`` appends and ``DirectoryCheckpoints`` in a consumer run.

Append: ``PUTS`` puts of ``PUT_ROWS`` records (utf8 user key, float value, 40-byte
text) into ``LocalLog(shards=1, fsync="always")``, so every put is fsynced.
Baseline: the same Arrow batches written with ``pyarrow.ipc.new_stream`` to one
file, with an fsync after each batch. LocalLog also hashes the keys, adds the
``seq`` and ``arrival`` columns, indexes the records for consumers and
(at a segment roll) maps the sealed segment back, so the ratio is what all of
that costs next to bare IPC writes. An 8-shard log (eight files synced per
put, concurrently) is measured too, as a figure.

Checkpoints: ``RECORDS`` records in ``MemoryStream(shards=8)`` on a
``VirtualClock``, consumed by a no-op handler with ``batch_size=1000``, once
with the default in-memory checkpoints and once with ``DirectoryCheckpoints``
(a save after every batch, group-committed by its writer thread). The target
compares the runs (what per-batch durable checkpoints cost the consumer); the
time from the end of the run until the last checkpoint is on disk (the final
``flush``: the write in progress plus one more) is a separate figure, as is
the cost of one ``save`` call.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

import streamcore as sc
from streamcore.benches.common import SEED, SHARDS, best_seconds, result, target, user_keys
from streamcore.checkpoints import ShardProgress

PUT_ROWS = 10_000
PUTS = 100
QUICK_PUTS = 10
RECORDS = 2_000_000
QUICK_RECORDS = 200_000
BATCH_SIZE = 1000
REPEAT = 9  # consumer runs take ~0.1 s now: more of them steady the best-of
APPEND_REPEAT = 5
TARGET_APPEND_RATIO = 0.7
TARGET_CHECKPOINT_COST = 0.10


def noop(batch: object) -> None:
    """The handler: does nothing, so the difference is the checkpoint store."""


def make_batches(puts: int) -> list[pa.RecordBatch]:
    n = puts * PUT_ROWS
    keys = user_keys(n)
    values = pc.round(pc.multiply(pc.random(n, initializer=SEED + 5), 100.0), 2)
    text = pa.array([f"click on /products/{i % 9973:05d} from search"[:40] for i in range(n)])
    table = pa.table({"key": keys, "value": values, "text": text})
    return table.to_batches(max_chunksize=PUT_ROWS)


def append_locallog(folder: Path, batches: list[pa.RecordBatch], shards: int) -> float:
    """Seconds to put every batch into a fresh fsync="always" LocalLog."""
    shutil.rmtree(folder, ignore_errors=True)
    with sc.LocalLog(folder, shards=shards, fsync="always") as log:
        started = time.perf_counter()
        for batch in batches:
            log.put(batch)
        return time.perf_counter() - started


def append_pyarrow(folder: Path, batches: list[pa.RecordBatch]) -> float:
    """Seconds to write the same batches as one IPC stream, fsync after each."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with pa.OSFile(str(folder / "stream.arrows"), "wb") as sink:
        started = time.perf_counter()
        with pa.ipc.new_stream(sink, batches[0].schema) as writer:
            for batch in batches:
                writer.write_batch(batch)
                sink.flush()
                os.fsync(sink.fileno())
        return time.perf_counter() - started


def consume(
    stream: sc.MemoryStream, clock: sc.VirtualClock, n: int, folder: Path | None
) -> tuple[float, float, int]:
    """Seconds of a full run from TRIM_HORIZON, then seconds until its checkpoints are on disk.

    Returns both with the number of checkpoint saves. Without a directory the
    second figure is 0: in-memory checkpoints are final when the run ends.
    """
    store = None if folder is None else sc.DirectoryCheckpoints(folder)
    # A no-op handler is CPU-bound Python: one invocation at a time, as such a job
    # should run (README, "Threads"); threads taking turns at the GIL make runs bimodal.
    with sc.App(store, clock=clock, concurrency=1) as app:
        app.consumer(stream, name="noop", batch_size=BATCH_SIZE)(noop)
        started = time.perf_counter()
        app.run(until_idle=True)
        ran = time.perf_counter()
        if store is not None:
            store.flush()
        flushed = time.perf_counter()
        metrics = app.metrics()
    if metrics["records_done"] != n:
        raise AssertionError(f"consumed {metrics['records_done']} of {n} records")
    return ran - started, flushed - ran, int(metrics["checkpoints_written"])


def save_seconds(store: sc.CheckpointStore, saves: int) -> float:
    """Seconds per ``save`` of one shard's progress, as a consumer makes after each batch."""
    store.load("bench")
    started = time.perf_counter()
    for i in range(saves):
        store.save("bench", {i % SHARDS: ShardProgress(i, [i])})
    return (time.perf_counter() - started) / saves


def run(quick: bool) -> dict[str, Any]:
    puts = QUICK_PUTS if quick else PUTS
    n = QUICK_RECORDS if quick else RECORDS
    root = Path(tempfile.mkdtemp(prefix="streamcore-durable-"))
    try:
        batches = make_batches(puts)
        appended = puts * PUT_ROWS
        # Alternate the two sides, so that drift in the disk's fsync latency hits both alike.
        log_s = ipc_s = float("inf")
        for _ in range(APPEND_REPEAT):
            ipc_s = min(ipc_s, append_pyarrow(root / "ipc", batches))
            log_s = min(log_s, append_locallog(root / "log", batches, 1))
        log8_s = best_seconds(lambda: append_locallog(root / "log8", batches, SHARDS), 1)
        log_bytes = sum(f.stat().st_size for f in (root / "log").rglob("*.arrows"))
        ipc_bytes = (root / "ipc" / "stream.arrows").stat().st_size
        # Both sides must hold what was appended: count it back from disk.
        with sc.LocalLog(root / "log") as reopened:
            log_records = len(reopened)
        with pa.memory_map(str(root / "ipc" / "stream.arrows")) as source:
            ipc_records = pa.ipc.open_stream(source).read_all().num_rows

        clock = sc.VirtualClock()
        stream = sc.MemoryStream(shards=SHARDS, clock=clock)
        keys = user_keys(n)
        stream.put(pa.table({"key": keys, "value": pc.random(n, initializer=SEED + 6)}))
        memory_s = durable_s = flush_s = float("inf")
        saves = 0
        for i in range(REPEAT):  # alternated, as above
            memory_s = min(memory_s, consume(stream, clock, n, None)[0])
            seconds, flushed, saves = consume(stream, clock, n, root / f"checkpoints-{i}")
            durable_s = min(durable_s, seconds)
            flush_s = min(flush_s, flushed)
        memory_save_s = save_seconds(sc.MemoryCheckpoints(), 20_000)
        with sc.DirectoryCheckpoints(root / "saves") as store:
            directory_save_s = save_seconds(store, 20_000)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    log_rate = appended / log_s
    ipc_rate = appended / ipc_s
    append_ratio = log_rate / ipc_rate
    checkpoint_cost = durable_s / memory_s - 1.0
    return result(
        "durable",
        checksum={"appended": log_records},
        baseline_checksum={"appended": ipc_records},
        description=(
            f"LocalLog put of {puts} x {PUT_ROWS:,} records, fsync per put; and a no-op "
            f"consumer of {n:,} records (batch_size {BATCH_SIZE}) with DirectoryCheckpoints"
        ),
        unit="rec/s",
        throughput=log_rate,
        baseline=ipc_rate,
        baseline_description="pyarrow.ipc stream writer, same batches, fsync per batch",
        targets=[
            target("LocalLog / pyarrow.ipc append", append_ratio, ">=", TARGET_APPEND_RATIO, "x"),
            target(
                "DirectoryCheckpoints cost vs memory",
                checkpoint_cost * 100,
                "<=",
                TARGET_CHECKPOINT_COST * 100,
                "%",
            ),
        ],
        figures={
            "locallog_put_ms": log_s / puts * 1000,
            "locallog_8_shards_put_ms": log8_s / puts * 1000,
            "pyarrow_ipc_write_ms": ipc_s / puts * 1000,
            "locallog_rec_per_s": log_rate,
            "locallog_8_shards_rec_per_s": appended / log8_s,
            "pyarrow_ipc_rec_per_s": ipc_rate,
            "locallog_bytes_per_record": log_bytes / appended,
            "pyarrow_ipc_bytes_per_record": ipc_bytes / appended,
            "consume_memory_checkpoints_s": memory_s,
            "consume_directory_checkpoints_s": durable_s,
            "directory_final_flush_ms": flush_s * 1000,
            "checkpoint_saves": saves,
            "checkpoint_cost_pct": checkpoint_cost * 100,
            "memory_checkpoints_save_us": memory_save_s * 1e6,
            "directory_checkpoints_save_us": directory_save_s * 1e6,
        },
        params={
            "put_rows": PUT_ROWS,
            "puts": puts,
            "records": n,
            "batch_size": BATCH_SIZE,
            "shards": SHARDS,
            "repeat": REPEAT,
        },
    )
