"""Quickstart: put a few records into a sharded stream and consume them in batches.

Runs in milliseconds and needs no server: the stream lives in memory and the
App runs on a ``VirtualClock``, so nothing waits on real time.

    python examples/quickstart.py
"""

from __future__ import annotations

import streamcore as sc


def main() -> None:
    clock = sc.VirtualClock()
    stream = sc.MemoryStream(shards=2, name="orders", clock=clock)

    # Records are rows; "customer" is the partition key: one customer's
    # records always land on the same shard, in the order they were put.
    placed = stream.put(
        [
            {"customer": "alice", "item": "book", "amount": 12.5},
            {"customer": "bob", "item": "pen", "amount": 1.2},
            {"customer": "alice", "item": "lamp", "amount": 30.0},
            {"customer": "carol", "item": "mug", "amount": 8.0},
            {"customer": "bob", "item": "ink", "amount": 4.75},
        ],
        key="customer",
    )
    print("put:", placed.to_pylist())

    seen: list[tuple[int, int, int, list[dict[str, object]]]] = []

    with sc.App(clock=clock) as app:

        @app.consumer(stream, batch_size=2)
        def handle(batch: sc.Batch) -> None:
            # batch.records is a pyarrow.RecordBatch: system columns seq, key,
            # arrival, then the payload columns.
            rows = batch.records.select(["seq", "customer", "item", "amount"]).to_pylist()
            seen.append((batch.shard, batch.first_seq, batch.last_seq, rows))

        app.run(until_idle=True)  # returns once every record is done

        # Shards are consumed concurrently; sort for a stable printout.
        for shard, first, last, rows in sorted(seen, key=lambda s: s[:2]):
            print(f"shard {shard}, seq {first}..{last}: {rows}")
        metrics = app.metrics()
        print(f"records done: {metrics['records_done']}, batches: {metrics['invocations']}")
        print("checkpoints:", app.checkpoints())


if __name__ == "__main__":
    main()
