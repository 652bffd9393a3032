"""Clickstream windows: per (60 s window, user_id) count and sum of value, three ways and more.

Data: ``EVENTS`` click events from ``streamcore.demo.make_events`` (fixed seed;
user ids Zipf-skewed over 100,000 users; a timestamp ``ts`` that moves 0-4 ms
per event, so 2M events span about 67 one-minute windows; a value). The
events are put into ``MemoryStream(shards=8)`` one minute of event time at a
time, with the stream's ``VirtualClock`` set to that minute, so a record's
arrival window is the window of its ``ts``.

streamcore: a consumer with ``batch_size=1000, tumbling_window=60`` in an
``App(concurrency=1)`` (a CPU-bound Python handler gains nothing from more
threads; the default concurrency is measured too, as a figure). Each
invocation folds its records into the native ``Aggregator`` kept live in
``batch.state`` (streamcore hands every invocation its own native copy, so a
failed one commits nothing; the fold itself runs on the Aggregator's
background thread, beside the framework's work: see ``Aggregator.update``);
the window's final invocation emits ``result()``. Timed: the puts (partition included) plus
``app.run(until_idle=True)``.

Baselines, same events, same process:

- python: a plain-Python consumer: per event ``xxhash.xxh64_intdigest`` of the
  user id, the shard from the same hash ranges, appended to that shard's list;
  every full list of 1000 is handed to a function that adds each row into a
  dict keyed by (window, user_id). Its input is Python lists made before the
  clock starts (``to_pylist`` is not timed).
- pyarrow: no stream at all, the whole 2M-row table at once: the window column
  (``ts`` in ms, floor-divided) then ``group_by(["window", "user_id"]).aggregate``.
  Timed in rounds with streamcore's (put, consume, group_by; ``REPEAT`` rounds),
  so that a drift of the machine's speed meets both sides. The target is the
  median of the per-round ratios: each ratio pairs two timings taken within a
  second of each other, where the ratio of each side's best pairs two rounds
  that may be far apart (one lucky pyarrow round moved it by 30% here); that
  ratio of bests is reported too.
- peers (when installed, on the first ``PEER_EVENTS`` events, checked against
  pyarrow's result over the same events): bytewax
  (``fold_final`` keyed by window and user) and sentry-arroyo (``LocalBroker``
  with 8 partitions, ``Reduce`` batches of 1000 into a dict aggregation).
  bytewax's own windowing (``fold_window`` on an ``EventClock`` with no wait)
  was tried first: about 1,600 events/s here, and it dropped events as late.

Every side's result is reduced to a checksum: groups, records counted, sum of
value and sum of squared group counts; they must agree.
"""

from __future__ import annotations

import gc
import statistics
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
from streamcore.aggregate import Aggregator
from streamcore.benches.common import SEED, SHARDS, best_seconds, checksums_equal, result, target
from streamcore.demo import make_events

EVENTS = 2_000_000
QUICK_EVENTS = 200_000
PEER_EVENTS = 500_000  # peers run at tens of thousands of events/s: the first 500k (2M took ~5 min)
QUICK_PEER_EVENTS = 20_000
BATCH_SIZE = 1000
WINDOW_S = 60
SWEEP_BATCH_SIZES = (100, 500, 1000, 5000)
REPEAT = 5  # interleaved rounds of put, consume and pyarrow
SIDE_REPEAT = 3  # the other figures (the Python baseline alone takes seconds a run)
QUICK_REPEAT = 1
# The handler is CPU-bound Python, so it runs one invocation at a time: Python runs
# one thread at a time anyway, and a second thread only adds hand-offs of the GIL
# (measured: 0.34 s with one, 0.46 s with two). The App's default (64) gives each of
# the 8 shards a thread of its own; that is measured too, as a figure.
CONCURRENCY = 1
DEFAULT_CONCURRENCY = 64
TARGET_VS_PYTHON = 10.0
TARGET_VS_PYARROW = 1.0


# --- data --------------------------------------------------------------------------


def make_clickstream(n: int) -> pa.Table:
    """``n`` events: ``user_id`` (utf8), ``page``, ``ts`` (timestamp[ms, UTC]), ``value`` (float64)."""
    return make_events(n, seed=SEED)


def window_chunks(events: pa.Table) -> list[tuple[float, int, int]]:
    """``(window start in epoch seconds, offset, rows)`` per window; ``ts`` ascends."""
    index = pc.divide(pc.cast(events["ts"], pa.int64()), WINDOW_S * 1000)
    counts = pc.run_end_encode(index).combine_chunks() if events.num_rows else None
    if counts is None:
        return []
    ends = counts.run_ends.to_pylist()
    windows = counts.values.to_pylist()
    out = []
    offset = 0
    for end, window in zip(ends, windows, strict=True):
        out.append((float(window * WINDOW_S), offset, end - offset))
        offset = end
    return out


def fill_stream(events: pa.Table) -> tuple[sc.MemoryStream, sc.VirtualClock, float]:
    """A fresh stream holding ``events``, put one window at a time; returns the put seconds too."""
    chunks = window_chunks(events)
    clock = sc.VirtualClock(start=chunks[0][0] if chunks else 0.0)
    stream = sc.MemoryStream(shards=SHARDS, clock=clock, name="clicks")
    started = time.perf_counter()
    for window_start, offset, rows in chunks:
        clock.advance_to(window_start)
        stream.put(events.slice(offset, rows), key="user_id")
    return stream, clock, time.perf_counter() - started


# --- checksums ---------------------------------------------------------------------


def checksum(groups: int, counts: pa.Array | pa.ChunkedArray, sums: pa.Array | pa.ChunkedArray) -> dict:
    """Groups, records counted, sum of value, and the sum of squared counts (catches mis-grouping)."""
    return {
        "groups": int(groups),
        "records": int(pc.sum(counts).as_py() or 0),
        "value_sum": float(pc.sum(sums).as_py() or 0.0),
        "count_squares": int(pc.sum(pc.multiply(counts, counts)).as_py() or 0),
    }


def dict_checksum(totals: dict[Any, list]) -> dict:
    counts = [c for c, _ in totals.values()]
    return {
        "groups": len(totals),
        "records": sum(counts),
        "value_sum": float(sum(s for _, s in totals.values())),
        "count_squares": sum(c * c for c in counts),
    }


# --- streamcore ----------------------------------------------------------------------


class WindowTotals:
    """The handler: one ``Aggregator`` per (shard, lane, window), carried in ``batch.state``.

    Thread-safe (invocations of different shards run at once): the state is
    per invocation, and the results list only ever gets appends. ``timed``:
    also sum the seconds spent in each Aggregator step (a separate run: the
    clock reads and the lock would otherwise be charged to the timed runs).
    """

    def __init__(self, timed: bool = False) -> None:
        self.timed = timed
        self.results: list[tuple[int, pa.Table]] = []  # (window start ms, per-user totals)
        self.early = 0
        self.state_sizes: list[int] = []
        # Seconds spent in each Aggregator step, summed over invocations (and threads).
        self.seconds = {"from_state": 0.0, "update": 0.0, "to_state": 0.0, "result": 0.0}
        self._lock = threading.Lock()

    def __call__(self, batch: sc.Batch) -> None:
        state = batch.state
        assert state is not None and batch.window is not None
        agg = state.get("agg")
        if batch.is_final:
            if agg is not None:
                t1 = time.perf_counter()
                totals = agg.result()
                t2 = time.perf_counter()
                with self._lock:
                    self.results.append((int(batch.window.start.timestamp() * 1000), totals))
                    self.early += batch.terminated_early
                    self.state_sizes.append(agg.nbytes)
                    self.seconds["result"] += t2 - t1
            return
        if agg is None:
            agg = state["agg"] = Aggregator(by=["user_id"], sum=["value"])
        if not self.timed:
            agg.update(batch.records)
            return
        t1 = time.perf_counter()
        agg.update(batch.records)
        t2 = time.perf_counter()
        with self._lock:
            self.seconds["update"] += t2 - t1

    def mean_state_bytes(self) -> float:
        """Mean native size of a window's aggregator at its closing invocation."""
        return sum(self.state_sizes) / len(self.state_sizes) if self.state_sizes else 0.0

    def checksum(self) -> dict:
        tables = [t for _, t in self.results]
        if not tables:
            return checksum(0, pa.array([], pa.int64()), pa.array([], pa.float64()))
        merged = pa.concat_tables(tables)
        return checksum(merged.num_rows, merged["count"], merged["value_sum"])


class LiveTotals(WindowTotals):
    """For comparison only: the Aggregator stays live in a dict, no state round trip.

    Not how a windowed handler should keep state (a retry or a restart loses
    it); it measures what ``from_state``/``to_state`` cost per invocation.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[tuple[int, int, float], Aggregator] = {}

    def __call__(self, batch: sc.Batch) -> None:
        assert batch.window is not None
        key = (batch.shard, batch.lane, batch.window.start.timestamp())
        if batch.is_final:
            agg = self.live.pop(key, None)
            if agg is not None:
                totals = agg.result()
                with self._lock:
                    self.results.append((int(key[2] * 1000), totals))
            return
        agg = self.live.get(key)
        if agg is None:
            agg = self.live[key] = Aggregator(by=["user_id"], sum=["value"])
        agg.update(batch.records)


def consume(
    stream: sc.MemoryStream,
    clock: sc.VirtualClock,
    batch_size: int,
    n: int,
    handler: WindowTotals | None = None,
    concurrency: int = CONCURRENCY,
) -> tuple[float, WindowTotals, dict[str, int | float]]:
    """Wall seconds of one full run of a fresh App from TRIM_HORIZON, the handler, the metrics."""
    handler = handler or WindowTotals()
    with sc.App(clock=clock, concurrency=concurrency) as app:
        app.consumer(stream, name="clicks", batch_size=batch_size, tumbling_window=WINDOW_S)(handler)
        started = time.perf_counter()
        app.run(until_idle=True)
        seconds = time.perf_counter() - started
        metrics = app.metrics()
    if metrics["records_done"] != n or metrics["errors"]:
        raise AssertionError(f"consumed {metrics['records_done']} of {n} records: {metrics}")
    return seconds, handler, metrics


# --- baselines -----------------------------------------------------------------------


def python_consumer(
    users: list[str], ts_ms: list[int], values: list[float], starts: list[int], batch_size: int
) -> dict[tuple[int, str], list]:
    """Partition with xxhash per event, lists of ``batch_size`` per shard, dict aggregation."""
    digest = xxhash.xxh64_intdigest
    window_ms = WINDOW_S * 1000
    totals: dict[tuple[int, str], list] = {}

    def handle(rows: list[int]) -> None:
        get = totals.get
        for i in rows:
            key = (ts_ms[i] // window_ms, users[i])
            acc = get(key)
            if acc is None:
                totals[key] = [1, values[i]]
            else:
                acc[0] += 1
                acc[1] += values[i]

    pending: list[list[int]] = [[] for _ in starts]
    for i, user in enumerate(users):
        rows = pending[bisect_right(starts, digest(user.encode())) - 1]
        rows.append(i)
        if len(rows) == batch_size:
            handle(rows)
            rows.clear()
    for rows in pending:
        if rows:
            handle(rows)
    return totals


def pyarrow_group_by(events: pa.Table) -> pa.Table:
    """The whole table at once: window column, then one hash aggregation."""
    window_ms = WINDOW_S * 1000
    window = pc.multiply(pc.divide(pc.cast(events["ts"], pa.int64()), window_ms), window_ms)
    table = pa.table({"window": window, "user_id": events["user_id"], "value": events["value"]})
    return table.group_by(["window", "user_id"]).aggregate([("value", "count"), ("value", "sum")])


# --- peers (optional) ----------------------------------------------------------------


def _bytewax(users: list[str], ts_ms: list[int], values: list[float]) -> tuple[float, dict] | None:
    try:
        import bytewax.operators as op
        from bytewax.dataflow import Dataflow
        from bytewax.testing import TestingSink, TestingSource, run_main
    except ImportError:
        return None
    window_ms = WINDOW_S * 1000
    items = list(zip(users, ts_ms, values, strict=True))
    out: list = []
    flow = Dataflow("clicks")
    events = op.input("in", flow, TestingSource(items, batch_size=BATCH_SIZE))
    keyed = op.key_on("key", events, lambda e: f"{e[1] // window_ms}|{e[0]}")

    def fold(acc: list, e: tuple) -> list:
        acc[0] += 1
        acc[1] += e[2]
        return acc

    totals = op.fold_final("agg", keyed, lambda: [0, 0.0], fold)
    op.output("out", totals, TestingSink(out))
    started = time.perf_counter()
    run_main(flow)
    seconds = time.perf_counter() - started
    return seconds, dict_checksum(dict(out))


def _arroyo(
    users: list[str], ts_ms: list[int], values: list[float], starts: list[int]
) -> tuple[float, dict] | None:
    try:
        from arroyo.backends.local.backend import LocalBroker
        from arroyo.backends.local.storages.memory import MemoryMessageStorage
        from arroyo.processing.processor import StreamProcessor
        from arroyo.processing.strategies import (
            CommitOffsets,
            ProcessingStrategyFactory,
            Reduce,
            RunTask,
        )
        from arroyo.types import Partition, Topic
    except ImportError:
        return None
    n = len(users)
    window_ms = WINDOW_S * 1000
    broker: Any = LocalBroker(MemoryMessageStorage())
    topic = Topic("clicks")
    broker.create_topic(topic, SHARDS)
    partitions = [Partition(topic, i) for i in range(SHARDS)]
    digest = xxhash.xxh64_intdigest
    for user, ts, value in zip(users, ts_ms, values, strict=True):  # producing is not timed
        broker.produce(partitions[bisect_right(starts, digest(user.encode())) - 1], (user, ts, value))
    totals: dict[tuple[int, str], list] = {}

    def accumulate(acc: list, message: Any) -> list:
        acc.append(message.payload)
        return acc

    def aggregate(message: Any) -> None:
        get = totals.get
        for user, ts, value in message.payload:
            key = (ts // window_ms, user)
            acc = get(key)
            if acc is None:
                totals[key] = [1, value]
            else:
                acc[0] += 1
                acc[1] += value

    class Factory(ProcessingStrategyFactory):  # type: ignore[misc]
        def create_with_partitions(self, commit: Any, partitions: Any) -> Any:
            return Reduce(BATCH_SIZE, 1.0, accumulate, list, RunTask(aggregate, CommitOffsets(commit)))

    consumer = broker.get_consumer("clicks")
    processor = StreamProcessor(consumer, topic, Factory())
    started = time.perf_counter()
    while True:
        processor._run_once()
        positions = consumer.tell()
        if len(positions) == SHARDS and sum(positions.values()) >= n:
            break
    processor._shutdown()  # closes the strategy: Reduce flushes its last partial batches
    seconds = time.perf_counter() - started
    return seconds, dict_checksum(totals)


PEERS: dict[str, Callable[..., tuple[float, dict] | None]] = {"bytewax": _bytewax, "arroyo": _arroyo}


def run_peers(events: pa.Table, starts: list[int]) -> dict[str, dict[str, Any]]:
    """Each installed peer on ``events``: rec/s and whether its checksum matches pyarrow's."""
    users = events["user_id"].to_pylist()
    ts_ms = pc.cast(events["ts"], pa.int64()).to_pylist()
    values = events["value"].to_pylist()
    expected_table = pyarrow_group_by(events)
    expected = checksum(expected_table.num_rows, expected_table["value_count"], expected_table["value_sum"])
    out: dict[str, dict[str, Any]] = {}
    for name, fn in PEERS.items():
        args: tuple = (users, ts_ms, values) + ((starts,) if name == "arroyo" else ())
        try:
            got = fn(*args)
        except Exception as exc:  # a peer's failure is reported, not fatal
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        if got is None:
            continue
        seconds, sums = got
        out[name] = {
            "events": events.num_rows,
            "seconds": seconds,
            "rec_per_s": events.num_rows / seconds,
            "checksum": sums,
            "checksum_ok": checksums_equal(sums, expected),
        }
    return out


def time_python(events: pa.Table, starts: list[int], repeat: int) -> tuple[float, dict]:
    """Best seconds of the plain-Python consumer over ``events`` (lists made untimed), its checksum."""
    users = events["user_id"].to_pylist()
    ts_ms = pc.cast(events["ts"], pa.int64()).to_pylist()
    values = events["value"].to_pylist()
    totals: dict = {}

    def once() -> None:
        totals.clear()
        totals.update(python_consumer(users, ts_ms, values, starts, BATCH_SIZE))

    return best_seconds(once, repeat), dict_checksum(totals)


# --- the workload --------------------------------------------------------------------


def run(quick: bool) -> dict[str, Any]:
    n = QUICK_EVENTS if quick else EVENTS
    repeat = QUICK_REPEAT if quick else REPEAT
    events = make_clickstream(n)
    starts = _partition.even_ranges(SHARDS)

    # Rounds of: put into a fresh stream, consume it with a fresh App, pyarrow's
    # group_by. Interleaved, so that both sides meet the machine in the same moods
    # (a shared VM's speed drifts by tens of percent within a run). The target is the
    # median of the rounds' ratios; each side's best makes the figures.
    put_s = consume_s = pyarrow_s = float("inf")
    grouped: list[pa.Table] = []
    round_ratios = []
    for _ in range(repeat):
        gc.collect()
        stream, clock, put_round = fill_stream(events)
        put_s = min(put_s, put_round)
        gc.collect()
        consume_round, handler, metrics = consume(stream, clock, BATCH_SIZE, n)
        consume_s = min(consume_s, consume_round)
        del stream
        gc.collect()
        started = time.perf_counter()
        grouped.append(pyarrow_group_by(events))
        pyarrow_round = time.perf_counter() - started
        pyarrow_s = min(pyarrow_s, pyarrow_round)
        round_ratios.append(pyarrow_round / (put_round + consume_round))
        del grouped[:-1]
    pyarrow_sum = checksum(grouped[-1].num_rows, grouped[-1]["value_count"], grouped[-1]["value_sum"])
    stream, clock, _ = fill_stream(events)
    streamcore_sum = handler.checksum()
    state_bytes = handler.mean_state_bytes()
    invocations = int(metrics["invocations"])
    windows = len(handler.results)
    steps = consume(stream, clock, BATCH_SIZE, n, WindowTotals(timed=True))[1].seconds

    # Full runs only: what the state round trip costs, and throughput against batch size.
    live_s = default_s = 0.0
    sweep: dict[str, float] = {}
    if not quick:
        default_s = min(
            consume(stream, clock, BATCH_SIZE, n, concurrency=DEFAULT_CONCURRENCY)[0]
            for _ in range(min(repeat, SIDE_REPEAT))
        )
        live_s, live, _ = consume(stream, clock, BATCH_SIZE, n, LiveTotals())
        if not checksums_equal(live.checksum(), streamcore_sum):
            raise AssertionError("the live-Aggregator variant gives another result")
        for size in SWEEP_BATCH_SIZES:
            if size == BATCH_SIZE:
                sweep[str(size)] = n / (put_s + consume_s)
                continue
            seconds, other, _ = consume(stream, clock, size, n)
            if not checksums_equal(other.checksum(), streamcore_sum):
                raise AssertionError(f"batch_size={size} gives another result")
            sweep[str(size)] = n / (put_s + seconds)
    del stream

    python_s, python_sum = time_python(events, starts, min(repeat, SIDE_REPEAT))

    peer_n = min(n, QUICK_PEER_EVENTS if quick else PEER_EVENTS)
    peers = run_peers(events.slice(0, peer_n), starts)

    total_s = put_s + consume_s
    rate = n / total_s
    python_rate = n / python_s
    pyarrow_rate = n / pyarrow_s
    consume_rate = n / consume_s
    res = result(
        "clickstream",
        description=(
            f"{n:,} events, {SHARDS} shards, batch_size {BATCH_SIZE}, tumbling_window={WINDOW_S}: "
            "Aggregator per invocation, state in batch.state; put + consume timed"
        ),
        unit="rec/s",
        throughput=rate,
        baseline=python_rate,
        baseline_description=(
            "Python consumer: xxhash partition + lists of 1000 + dict per (window, user); "
            f"also pyarrow group_by on the whole table ({pyarrow_rate / 1e6:.2f}M rec/s)"
        ),
        targets=[
            target("vs Python consumer", rate / python_rate, ">=", TARGET_VS_PYTHON, "x"),
            target(
                "vs pyarrow whole-table group_by (median of per-round ratios)",
                statistics.median(round_ratios), ">=", TARGET_VS_PYARROW, "x",
            ),
        ],
        figures={
            "events": n,
            "windows_emitted": windows,
            "groups": streamcore_sum["groups"],
            "invocations": invocations,
            "windows_terminated_early": handler.early,
            "put_seconds": put_s,
            "consume_seconds": consume_s,
            "put_records_per_s": n / put_s,
            "consume_records_per_s": consume_rate,
            "us_per_invocation": consume_s / invocations * 1e6,
            **(
                {}
                if quick
                else {
                    "consume_seconds_live_aggregator_no_state": live_s,
                    f"consume_seconds_concurrency_{DEFAULT_CONCURRENCY}": default_s,
                    "state_round_trip_us_per_invocation": (consume_s - live_s) / invocations * 1e6,
                }
            ),
            **{  # wall time inside each step (a separate run), summed over the worker threads
                f"handler_{step}_us_per_invocation": seconds / invocations * 1e6
                for step, seconds in steps.items()
            },
            "state_bytes_per_window_mean": state_bytes,
            "python_seconds": python_s,
            "pyarrow_seconds": pyarrow_s,
            "pyarrow_records_per_s": pyarrow_rate,
            "ratio_vs_pyarrow": rate / pyarrow_rate,
            "ratio_vs_pyarrow_per_round_median": statistics.median(round_ratios),
            "consume_only_ratio_vs_python": consume_rate / python_rate,
            "consume_only_ratio_vs_pyarrow": consume_rate / pyarrow_rate,
            **{f"{name}_records_per_s": p["rec_per_s"] for name, p in peers.items() if "rec_per_s" in p},
            **{
                f"ratio_consume_only_vs_{name}": consume_rate / p["rec_per_s"]
                for name, p in peers.items()
                if "rec_per_s" in p
            },
        },
        params={
            "events": n,
            "users": 100_000,
            "shards": SHARDS,
            "batch_size": BATCH_SIZE,
            "window_s": WINDOW_S,
            "concurrency": CONCURRENCY,
            "repeat": repeat,
            "peer_events": peer_n,
            "quick": quick,
        },
        checksum=streamcore_sum,
        baseline_checksum=python_sum,
        series={
            "bars": {
                "streamcore": rate,
                "Python consumer": python_rate,
                "pyarrow group_by": pyarrow_rate,
                **{name: p["rec_per_s"] for name, p in peers.items() if "rec_per_s" in p},
            },
            "batch_size": sweep,
            "batch_size_label": "Aggregator in window state, put + consume",
        },
    )
    # Every side must agree, not only the main baseline.
    res["checksums"] = {"streamcore": streamcore_sum, "python": python_sum, "pyarrow": pyarrow_sum}
    res["peers"] = peers
    ok = bool(res["checksum_ok"]) and checksums_equal(streamcore_sum, pyarrow_sum)
    ok = ok and all(p.get("checksum_ok", True) for p in peers.values() if "error" not in p)
    res["checksum_ok"] = ok
    return res
