"""Subprocesses that ``tests/test_crash_recovery.py`` kills with SIGKILL at random moments.

``python crash_worker.py consume LOG CHECKPOINTS OUT``: consume the LocalLog at
LOG with checkpoints in CHECKPOINTS; per batch, append one ``key seq shard`` line
per record to OUT (one write, flushed), then exit 0 once everything is done.

``python crash_worker.py produce LOG FIRST_PUT PUTS``: put PUTS batches into
LOG (fsync="always"); after each put returns, print ``put_id shard:last_seq ...``.
"""

from __future__ import annotations

import os
import sys
import time

import pyarrow as pa

import streamcore as sc

SHARDS = 4
PUT_ROWS = 64  # the producer's rows per put: the same keys each time


def put_keys() -> list[str]:
    return [f"key-{j}" for j in range(PUT_ROWS)]


def _end_torn_line(out_path: str, out: int) -> None:
    """A kill can cut a write short: end the cut line, so that this run's first line
    is not glued to it (the reader skips the cut line, which no longer parses)."""
    with open(out_path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b"\n":
            os.write(out, b"\n")


def consume(log_path: str, checkpoints: str, out_path: str) -> int:
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    _end_torn_line(out_path, out)
    stream = sc.LocalLog(log_path)
    app = sc.App(checkpoints=checkpoints, concurrency=8)

    @app.consumer(stream, batch_size=100, parallelization=2)
    def handle(batch: sc.Batch) -> None:
        keys = batch.records.column("key").to_pylist()
        seqs = batch.records.column("seq").to_pylist()
        lines = (f"{k} {s} {batch.shard}\n" for k, s in zip(keys, seqs, strict=True))
        os.write(out, "".join(lines).encode())
        time.sleep(0.04)  # a handler that takes time, so kills land mid-run

    app.run(until_idle=True)
    app.close()
    stream.close()
    os.close(out)
    return 0


def produce(log_path: str, first_put: int, puts: int) -> int:
    stream = sc.LocalLog(log_path, shards=SHARDS, fsync="always", segment_bytes=16 * 1024)
    keys = put_keys()
    for put_id in range(first_put, first_put + puts):
        table = pa.table(
            {
                "key": keys,
                "put": pa.array([put_id] * PUT_ROWS, pa.int64()),
                "row": pa.array(range(PUT_ROWS), pa.int64()),
                "pad": [b"x" * 100] * PUT_ROWS,
            }
        )
        placed = stream.put(table)
        last: dict[int, int] = {}
        for shard, seq in zip(
            placed.column("shard").to_pylist(), placed.column("seq").to_pylist(), strict=True
        ):
            last[shard] = max(last.get(shard, -1), seq)
        line = " ".join(f"{shard}:{seq}" for shard, seq in sorted(last.items()))
        sys.stdout.write(f"{put_id} {line}\n")
        sys.stdout.flush()
    stream.close()
    return 0


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "consume":
        raise SystemExit(consume(*args))
    raise SystemExit(produce(args[0], int(args[1]), int(args[2])))
