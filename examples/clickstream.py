"""Clickstream: clicks per user per minute, in tumbling windows, with the native Aggregator.

The job that ``python -m streamcore demo`` runs (with a progress bar and
tables), in its plainest form: generated click events (user_id, page, ts,
value) go into a sharded in-memory stream one minute at a time, a consumer
with one-minute tumbling windows folds each batch into an ``sc.Aggregator``
kept in the window's state, and each window's closing invocation prints the
window's busiest users.

    python examples/clickstream.py [events]
"""

from __future__ import annotations

import sys
import time

import pyarrow as pa

import streamcore as sc
from streamcore.demo import START_MS, make_events, minute_chunks


def main(events: int = 200_000) -> None:
    clock = sc.VirtualClock(start=START_MS / 1000)
    stream = sc.MemoryStream(shards=8, name="clicks", clock=clock)
    for minute in minute_chunks(make_events(events)):
        clock.advance_to(minute["ts"][0].value / 1000)  # arrival follows event time
        stream.put(minute, key="user_id")

    closed: dict[int, list[pa.Table]] = {}  # window start -> per-shard totals
    app = sc.App(clock=clock, concurrency=1)  # a CPU-bound handler: one thread is fastest

    @app.consumer(stream, batch_size=1000, tumbling_window=60)
    def clicks_per_user(batch: sc.Batch) -> None:
        agg = batch.state.setdefault("agg", sc.Aggregator(by=["user_id"], sum=["value"]))
        if batch.is_final:  # the window closed: its records are all in
            closed.setdefault(int(batch.window.start.timestamp()), []).append(agg.result())
        else:
            agg.update(batch.records)  # native: no Python loop over the records

    app.run(until_idle=True)  # returns once every window is closed

    for start in sorted(closed)[-3:]:
        # A user's clicks all land on one shard: the shards' totals just concatenate.
        totals = pa.concat_tables(closed[start]).sort_by([("count", "descending"), ("user_id", "ascending")])
        top = ", ".join(f"{r['user_id']} ({r['count']})" for r in totals.slice(0, 3).to_pylist())
        label = time.strftime("%Y-%m-%d %H:%M", time.gmtime(start))
        print(f"{label}: {totals.num_rows:,} users, {sum(totals['count'].to_pylist()):,} clicks; top {top}")
    print(f"{app.metrics()['records_done']:,} events in {len(closed)} one-minute windows")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
