"""``python -m streamcore demo``: a clickstream in one-minute windows, aggregated per user.

Generates click events with a fixed seed (user ids Zipf-skewed over 100,000
users, a page, a timestamp and a value) and puts them into a ``MemoryStream``
minute by minute on a ``VirtualClock``, so a record's arrival window is the
window of its ``ts``. A consumer with ``tumbling_window=60`` folds every batch
into a native ``sc.Aggregator`` kept in the window's state (count and sum of
value per user); each window's closing invocation reports its busiest users.
Needs no server and nothing beyond streamcore's own dependencies.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import streamcore as sc

USERS = 100_000
ZIPF_EXPONENT = 1.1
SEED = 20240601
PUT_CHUNK = 50_000
PAGES = ("/", "/search", "/product", "/cart", "/checkout", "/account", "/help")
START_MS = 1_700_000_000_000
POLL_SECONDS = 0.1


def zipf_user_ids(
    n: int, *, users: int = USERS, exponent: float = ZIPF_EXPONENT, seed: int = SEED
) -> pa.Array:
    """``n`` ids like ``"user-00042"``, Zipf-skewed over ``users`` ids: few hot users, a long tail.

    Vectorised: ranks come from the inverse CDF of a power law bounded to
    ``[1, users + 1)`` applied to seeded uniforms, then are scattered over the
    id space (a multiplicative hash) so the hot users are not simply 0, 1, 2.
    """
    if n == 0:
        return pa.array([], pa.utf8())
    a = 1.0 - exponent
    top = float(users + 1) ** a
    u = pc.random(n, initializer=seed)
    x = pc.power(pc.add(pc.multiply(u, top - 1.0), 1.0), 1.0 / a)
    rank = pc.subtract(pc.cast(pc.floor(x), pa.int64()), 1)
    rank = pc.min_element_wise(pc.max_element_wise(rank, 0), users - 1)  # guard rounding
    mixed = pc.add(pc.multiply(rank, 7919), 4242)  # 7919 is prime, so coprime to users=10^5
    ids = pc.subtract(mixed, pc.multiply(pc.divide(mixed, users), users))  # mixed % users
    width = len(str(users - 1))
    digits = pc.utf8_lpad(pc.cast(ids, pa.utf8()), width, "0")
    return pc.binary_join_element_wise("user-", digits, "")


def make_events(n: int, *, seed: int = SEED) -> pa.Table:
    """``n`` click events: ``user_id``, ``page`` (utf8), ``ts`` (timestamp[ms, UTC]), ``value``."""
    pages = pa.array(PAGES, pa.utf8())
    page_index = pc.cast(
        pc.floor(pc.multiply(pc.random(n, initializer=seed + 1), len(PAGES))), pa.int32()
    )
    gaps_ms = pc.cast(pc.floor(pc.multiply(pc.random(n, initializer=seed + 2), 5.0)), pa.int64())
    ts_ms = pc.add(pc.cumulative_sum(gaps_ms), START_MS) if n else pa.array([], pa.int64())
    value = pc.round(pc.multiply(pc.random(n, initializer=seed + 3), 100.0), 2)
    return pa.table(
        {
            "user_id": zipf_user_ids(n, seed=seed),
            "page": pages.take(page_index),
            "ts": pc.cast(ts_ms, pa.timestamp("ms", tz="UTC")),
            "value": pc.cast(value, pa.float64()),
        }
    )


class WindowTotals:
    """The handler: per (shard, lane, window) an ``Aggregator`` in ``batch.state``.

    On a window's closing invocation its per-user totals are kept; thread-safe,
    so it also works in an App that runs several invocations at once.
    """

    def __init__(self) -> None:
        self._closed: list[tuple[int, pa.Table]] = []  # (window start, epoch s), per-user totals
        self._lock = threading.Lock()
        self.last_done = 0.0  # time.perf_counter() when the latest invocation finished

    def __call__(self, batch: sc.Batch) -> None:
        assert batch.state is not None and batch.window is not None
        agg = batch.state.setdefault("agg", sc.Aggregator(by=["user_id"], count=True, sum=["value"]))
        if batch.is_final:
            totals = agg.result()
            with self._lock:
                self._closed.append((int(batch.window.start.timestamp()), totals))
        else:
            agg.update(batch.records)
        with self._lock:
            self.last_done = time.perf_counter()

    def windows(self) -> list[tuple[int, pa.Table]]:
        """Per closed window (oldest first): ``user_id``, ``count``, ``value_sum``, busiest first.

        A window's shards and lanes close separately; their partial totals merge here.
        """
        with self._lock:
            closed = list(self._closed)
        by_window: dict[int, list[pa.Table]] = {}
        for start, table in closed:
            by_window.setdefault(start, []).append(table)
        out = []
        for start in sorted(by_window):
            merged = (
                pa.concat_tables(by_window[start])
                .group_by("user_id")
                .aggregate([("count", "sum"), ("value_sum", "sum")])
                .rename_columns(["user_id", "count", "value_sum"])
            )
            out.append((start, merged.sort_by([("count", "descending"), ("user_id", "ascending")])))
        return out


def minute_chunks(events: pa.Table) -> list[pa.Table]:
    """``events`` (sorted by ``ts``) cut at minute boundaries of ``ts``."""
    minute = pc.divide(pc.cast(pc.cast(events["ts"], pa.int64()), pa.int64()), 60_000)
    ends = pc.run_end_encode(minute.combine_chunks()).run_ends.to_pylist()
    starts = [0, *ends[:-1]]
    return [events.slice(a, b - a) for a, b in zip(starts, ends, strict=True)]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m streamcore demo",
        description="Consume a generated clickstream through a sharded in-memory stream.",
    )
    parser.add_argument(
        "--events", type=int, default=1_000_000, help="events to generate (default 1,000,000)"
    )
    parser.add_argument("--shards", type=int, default=8, help="shards of the stream (default 8)")
    parser.add_argument(
        "--batch-size", type=int, default=1000, help="records per batch (default 1000)"
    )
    args = parser.parse_args(argv)
    if args.events < 1:
        parser.error(f"--events={args.events} is invalid: expected an integer >= 1")
    if args.shards < 1:
        parser.error(f"--shards={args.shards} is invalid: expected an integer >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the process exit code."""
    args = _parse(argv)
    console = Console()
    total = args.events

    started = time.perf_counter()
    events = make_events(total)
    generate_s = time.perf_counter() - started

    clock = sc.VirtualClock(start=START_MS / 1000)
    stream = sc.MemoryStream(shards=args.shards, name="clicks", clock=clock)
    started = time.perf_counter()
    for chunk in minute_chunks(events):
        clock.advance_to(chunk["ts"][0].value / 1000)  # arrival follows event time
        for offset in range(0, chunk.num_rows, PUT_CHUNK):
            stream.put(chunk.slice(offset, PUT_CHUNK), key="user_id")
    put_s = time.perf_counter() - started

    totals = WindowTotals()
    app = sc.App(clock=clock, concurrency=1)  # a CPU-bound handler: more threads only trade the GIL
    try:
        app.consumer(stream, name="clicks_per_minute", batch_size=args.batch_size, tumbling_window=60)(
            totals
        )
    except ValueError as exc:  # a batch size outside 1..10000, named by the error
        console.print(f"[red]error:[/red] {exc}")
        return 2

    columns = (
        TextColumn("[bold]consuming"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("records"),
        TimeElapsedColumn(),
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            app.run(until_idle=True)  # returns once every window is closed
        except BaseException as exc:  # shown below
            errors.append(exc)

    with app, Progress(*columns, console=console) as progress:
        task = progress.add_task("consume", total=total)
        started = time.perf_counter()
        runner = threading.Thread(target=run, name="demo-app", daemon=True)
        runner.start()
        while runner.is_alive():
            metrics = app.metrics()
            progress.update(task, completed=int(metrics["records_done"]))
            if metrics["errors"]:
                app.stop(drain=False)
                break
            runner.join(POLL_SECONDS)
        runner.join()
        # The last handler's finish, not the poll that noticed it (polls are 0.1 s apart).
        consume_s = max(totals.last_done, started + 1e-9) - started
        metrics = app.metrics()
        progress.update(task, completed=int(metrics["records_done"]))
        checkpoints = app.checkpoints()["clicks_per_minute"]

    if errors or metrics["errors"]:
        console.print(f"[red]the handler failed {metrics['errors']} time(s); stopped {errors}[/red]")
        return 1

    windows = totals.windows()
    counted = sum(pc.sum(t["count"]).as_py() or 0 for _, t in windows)
    if counted != total:
        console.print(f"[red]aggregated {counted:,} events, expected {total:,}[/red]")
        return 1

    summary = Table(title="streamcore demo: clicks per user per minute", show_header=False)
    summary.add_column("figure", style="bold")
    summary.add_column("value", justify="right")
    summary.add_row("records", f"{int(metrics['records_done']):,}")
    summary.add_row("invocations (batches + window closings)", f"{int(metrics['invocations']):,}")
    summary.add_row("shards / batch size", f"{args.shards} / {args.batch_size}")
    summary.add_row("one-minute windows", f"{len(windows):,}")
    summary.add_row("generate (s)", f"{generate_s:.3f}")
    summary.add_row("put (s)", f"{put_s:.3f}")
    summary.add_row("elapsed, consume (s)", f"{consume_s:.3f}")
    summary.add_row("records/s", f"{total / consume_s:,.0f}")

    shards = Table(title="checkpoints")
    shards.add_column("shard", justify="right")
    shards.add_column("checkpoint (seq)", justify="right")
    shards.add_column("records", justify="right")
    for shard_id, seq in sorted(checkpoints.items()):  # seqs start at 0 in every shard
        shards.add_row(
            str(shard_id), "-" if seq is None else f"{seq:,}", f"{0 if seq is None else seq + 1:,}"
        )

    top = Table(title="top 5 users by count, last 5 windows")
    top.add_column("window (UTC)")
    top.add_column("user_id")
    top.add_column("count", justify="right")
    top.add_column("sum of value", justify="right")
    for start, table in windows[-5:]:
        label = time.strftime("%Y-%m-%d %H:%M", time.gmtime(start))
        for row in table.slice(0, 5).to_pylist():
            top.add_row(label, row["user_id"], f"{row['count']:,}", f"{row['value_sum']:,.2f}")
            label = ""

    console.print(summary)
    console.print(shards)
    console.print(top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
