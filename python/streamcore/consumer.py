"""The runtime of one stream consumer: a ``ShardDispatcher`` per shard, invocations, outcomes.

The App's scheduler calls these methods; every method but ``invoke`` runs
under the App's lock. ``invoke`` reads the records and runs the handler
without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from streamcore._dispatch import ShardDispatcher
from streamcore.batch import Batch
from streamcore.checkpoints import CheckpointStore
from streamcore.clock import Clock
from streamcore.options import StreamOptions, backoff_delay
from streamcore.sources.memory import MemoryStream
from streamcore.sources.shardlog import ShardLog

Handler = Callable[[Batch], Any]

COUNTERS = (
    "records_in",
    "records_done",
    "invocations",
    "errors",
    "retries",
    "bisects",
    "dead_lettered",
    "throttles",
    "checkpoints_written",
)


class ShardState:
    """One shard as one consumer sees it."""

    __slots__ = ("checkpoint", "dispatcher", "log", "shard_id")

    def __init__(self, log: ShardLog, dispatcher: ShardDispatcher, checkpoint: int | None) -> None:
        self.shard_id = log.shard_id
        self.log = log
        self.dispatcher = dispatcher
        self.checkpoint = checkpoint  # last reported checkpoint, None before any


@dataclass(slots=True, eq=False)  # identity hash: works sit in a set while in flight
class Work:
    """One invocation handed from the scheduler to a worker."""

    consumer: StreamConsumer
    shard: ShardState
    lane: int
    count: int
    attempt: int
    first_seq: int
    last_seq: int
    contiguous: bool
    base: int
    offsets: pa.Array | None
    last_arrival_ms: int
    epoch: int


@dataclass(slots=True)
class Outcome:
    """What an invocation produced: nothing (success) or an error."""

    error: BaseException | None = None


class StreamConsumer:
    """A handler attached to a stream with validated options."""

    def __init__(
        self,
        name: str,
        handler: Handler,
        stream: MemoryStream,
        options: StreamOptions,
        store: CheckpointStore,
        clock: Clock,
    ) -> None:
        self.name = name
        self.handler = handler
        self.stream = stream
        self.options = options
        self.store = store
        self.clock = clock
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.iterator_age_ms = 0
        self.in_flight = 0
        saved = store.load(name)
        self.shards: dict[int, ShardState] = {}
        for shard_id in stream.shard_ids:
            log = stream.shard_log(shard_id)
            start = self._start_seq(log, saved.get(shard_id))
            dispatcher = ShardDispatcher(
                options.parallelization,
                options.batch_size,
                options.max_batch_bytes,
                options.batch_window,
                start,
            )
            self.shards[shard_id] = ShardState(log, dispatcher, saved.get(shard_id))

    def _start_seq(self, log: ShardLog, saved: int | None) -> int:
        opts = self.options
        if saved is not None:
            start = saved + 1
        elif opts.starting_position == "LATEST":
            start = log.next_seq
        elif opts.starting_position == "AT_TIMESTAMP":
            assert opts.starting_timestamp is not None
            start = log.seq_at_time(int(opts.starting_timestamp * 1000))
        elif opts.starting_position == "AT_SEQUENCE":
            start = opts.starting_sequence.get(log.shard_id, log.trim_seq)
        else:
            start = log.trim_seq
        return max(start, log.trim_seq)

    # -- scheduling (under the App lock) ----------------------------------------

    def _ingest(self, state: ShardState) -> None:
        dispatcher = state.dispatcher
        log = state.log
        if log.next_seq <= dispatcher.next_read:
            return
        now = self.clock.now()
        before = dispatcher.next_read
        with self.stream._lock:
            if dispatcher.next_read < log.trim_seq:
                dispatcher.skip_to(log.trim_seq)
            for chunk, start in log.chunks_from(dispatcher.next_read):
                dispatcher.ingest(chunk.first_seq, chunk.hashes, chunk.sizes, chunk.arrival_ms, start, now)
        self.counters["records_in"] += dispatcher.next_read - before

    def next_work(self, state: ShardState, epoch: int) -> Work | None:
        """Start the shard's next ready batch, if any."""
        self._ingest(state)
        dispatcher = state.dispatcher
        polled = dispatcher.poll(self.clock.now())
        if polled is None:
            return None
        lane, count, attempt = polled
        first, last, contiguous = dispatcher.batch_bounds(lane)
        base = first
        offsets = None
        if not contiguous:
            base = state.log.chunk_start(first)
            offsets = dispatcher.batch_offsets(lane, base)
        self.in_flight += 1
        return Work(
            self, state, lane, count, attempt, first, last, contiguous, base, offsets,
            dispatcher.batch_arrivals(lane)[1], epoch,
        )

    def next_deadline(self) -> float:
        return min((s.dispatcher.next_deadline() for s in self.shards.values()), default=float("inf"))

    # -- invocation (outside the App lock) -------------------------------------

    def read(self, work: Work) -> pa.RecordBatch:
        log = work.shard.log
        with self.stream._lock:
            if work.contiguous:
                return log.read(work.first_seq, work.count)
            assert work.offsets is not None
            return log.take(work.base, work.last_seq, work.offsets)

    def invoke(self, work: Work) -> Outcome:
        """Read the batch's records and run the handler; never raises."""
        try:
            records = self.read(work)
            batch = Batch(
                records,
                source=self.stream.name,
                shard=work.shard.shard_id,
                lane=work.lane,
                first_seq=work.first_seq,
                last_seq=work.last_seq,
                attempt=work.attempt,
            )
            self.handler(batch)
        except Exception as exc:  # a failing handler is an outcome, not a crash
            return Outcome(error=exc)
        return Outcome()

    # -- outcomes (under the App lock) -----------------------------------------

    def finish(self, work: Work, outcome: Outcome) -> None:
        self.in_flight -= 1
        now = self.clock.now()
        dispatcher = work.shard.dispatcher
        self.counters["invocations"] += 1
        self.iterator_age_ms = max(0, int(now * 1000) - work.last_arrival_ms)
        if outcome.error is None:
            dispatcher.complete(work.lane, now)
            self.counters["records_done"] += work.count
            self._checkpoint(work.shard)
            return
        self.counters["errors"] += 1
        self.counters["retries"] += 1
        delay = backoff_delay(work.attempt, self.options.retry_backoff, self.clock.random())
        dispatcher.fail(work.lane, now, now + delay)

    def abandon(self, work: Work) -> None:
        """A stop without drain: the batch goes back unchanged, to be redelivered."""
        self.in_flight -= 1
        work.shard.dispatcher.release(work.lane)

    def _checkpoint(self, state: ShardState) -> None:
        seq = state.dispatcher.checkpoint()
        if seq >= 0 and (state.checkpoint is None or seq > state.checkpoint):
            state.checkpoint = seq
            self.store.save(self.name, {state.shard_id: seq})
            self.counters["checkpoints_written"] += 1

    def checkpoints(self) -> dict[int, int | None]:
        return {shard_id: state.checkpoint for shard_id, state in self.shards.items()}

    def metrics(self) -> dict[str, int | float]:
        out: dict[str, int | float] = dict(self.counters)
        out["iterator_age_ms"] = self.iterator_age_ms
        out["concurrent_executions"] = self.in_flight
        return out

