"""The runtime of one stream consumer: a ``ShardDispatcher`` per shard, invocations, outcomes.

The App's scheduler calls these methods; every method but ``invoke`` runs
under the App's lock. ``invoke`` reads the records and runs the handler (or
delivers discarded records to ``on_failure``) without it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from streamcore._dispatch import INVOKE, ShardDispatcher
from streamcore.batch import Batch
from streamcore.checkpoints import CheckpointStore, ShardProgress
from streamcore.clock import Clock
from streamcore.failures import CONDITIONS, FailedBatch, InvalidResponse, deliver, failed_seqs
from streamcore.options import StreamOptions
from streamcore.sources.memory import MemoryStream
from streamcore.sources.shardlog import ShardLog

log = logging.getLogger("streamcore")

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

# Seconds before a failed on_failure delivery is tried again (the lane waits meanwhile).
DELIVERY_RETRY_DELAY = 1.0


class ShardState:
    """One shard as one consumer sees it."""

    __slots__ = ("checkpoint", "dispatcher", "last_error", "log", "shard_id")

    def __init__(self, log: ShardLog, dispatcher: ShardDispatcher, checkpoint: int | None) -> None:
        self.shard_id = log.shard_id
        self.log = log
        self.dispatcher = dispatcher
        self.checkpoint = checkpoint  # last reported checkpoint, None before any
        # Per lane: the last failure's message and whether it was an exception/timeout.
        self.last_error: dict[int, tuple[str | None, bool]] = {}


@dataclass(slots=True, eq=False)  # identity hash: works sit in a set while in flight
class Work:
    """One action handed from the scheduler to a worker: an invocation or a discard."""

    consumer: StreamConsumer
    shard: ShardState
    lane: int
    count: int
    attempt: int
    kind: int  # INVOKE or a discard condition code
    first_seq: int
    last_seq: int
    contiguous: bool
    base: int
    offsets: pa.Array | None
    last_arrival_ms: int
    epoch: int
    deadline: float = float("inf")  # clock time at which the invocation times out
    thread: int = 0  # ident of the worker thread running it
    timed_out: bool = False


@dataclass(slots=True)
class Outcome:
    """What an action produced. ``error`` None and ``failed`` empty is a success."""

    error: str | None = None
    function_error: bool = False  # an exception or a timeout, rather than a bad response
    failed: list[int] = field(default_factory=list)  # partial response: failed seqs
    done: int = 0  # partial response: records before the lowest failed seq


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
            progress = saved.get(shard_id)
            checkpoint = progress.checkpoint if progress is not None and progress.checkpoint >= 0 else None
            dispatcher = ShardDispatcher(
                options.parallelization,
                options.batch_size,
                options.max_batch_bytes,
                options.batch_window,
                self._start_seq(log, checkpoint),
                options.bisect_on_error,
                options.max_retries,
                options.max_record_age,
                options.retry_backoff,
            )
            if progress is not None and len(progress.lanes) == options.parallelization:
                dispatcher.restore_lanes(progress.lanes)
            self.shards[shard_id] = ShardState(log, dispatcher, checkpoint)

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
        """Start the shard's next ready action, if any."""
        self._ingest(state)
        dispatcher = state.dispatcher
        now = self.clock.now()
        polled = dispatcher.poll(now)
        if polled is None:
            return None
        lane, count, attempt, kind = polled
        first, last, contiguous = dispatcher.batch_bounds(lane)
        base = first
        offsets = None
        if not contiguous:
            base = state.log.chunk_start(first)
            offsets = dispatcher.batch_offsets(lane, base)
        self.in_flight += 1
        work = Work(
            self, state, lane, count, attempt, kind, first, last, contiguous, base, offsets,
            dispatcher.batch_arrivals(lane)[1], epoch,
        )
        if kind == INVOKE and self.options.timeout is not None:
            work.deadline = now + self.options.timeout
        return work

    def next_deadline(self) -> tuple[float, float]:
        """``(due, upcoming)`` over every shard: see ``ShardDispatcher.next_deadline``."""
        now = self.clock.now()
        due = upcoming = float("inf")
        for state in self.shards.values():
            d, u = state.dispatcher.next_deadline(now)
            due = min(due, d)
            upcoming = min(upcoming, u)
        return due, upcoming

    # -- invocation (outside the App lock) -------------------------------------

    def read(self, work: Work) -> pa.RecordBatch:
        log = work.shard.log
        with self.stream._lock:
            if work.contiguous:
                return log.read(work.first_seq, work.count)
            assert work.offsets is not None
            return log.take(work.base, work.last_seq, work.offsets)

    def invoke(self, work: Work) -> Outcome:
        """Run the handler on the batch, or deliver a discard; never raises."""
        try:
            records = self.read(work)
        except Exception as exc:  # the log lost the records (retention): say so, retry later
            return Outcome(error=f"cannot read records: {exc!r}", function_error=True)
        if work.kind != INVOKE:
            return self._discard(work, records)
        batch = Batch(
            records,
            source=self.stream.name,
            shard=work.shard.shard_id,
            lane=work.lane,
            first_seq=work.first_seq,
            last_seq=work.last_seq,
            attempt=work.attempt,
        )
        try:
            result = self.handler(batch)
        except BaseException as exc:  # a failing handler is an outcome, not a crash
            return Outcome(error=f"{type(exc).__name__}: {exc}", function_error=True)
        if not self.options.report_failures:
            return Outcome()
        seqs = records.column("seq")
        try:
            failed = failed_seqs(result, seqs)
        except InvalidResponse as exc:
            return Outcome(error=f"invalid batch response: {exc}")
        if not failed:
            return Outcome()
        lowest = min(failed)
        done = lowest - work.first_seq if work.contiguous else pc.index(seqs, lowest).as_py()
        return Outcome(failed=failed, done=done)

    def _discard(self, work: Work, records: pa.RecordBatch) -> Outcome:
        message, function_error = work.shard.last_error.get(work.lane, (None, False))
        arrivals = records.column("arrival")
        failed = FailedBatch(
            consumer=self.name,
            source=self.stream.name,
            shard=work.shard.shard_id,
            first_seq=work.first_seq,
            last_seq=work.last_seq,
            size=work.count,
            condition=CONDITIONS[work.kind],
            attempts=work.attempt,
            error=message if work.kind == 1 else None,
            function_error=function_error if work.kind == 1 else False,
            first_arrival=arrivals[0].as_py(),
            last_arrival=arrivals[-1].as_py(),
            timestamp=datetime.fromtimestamp(self.clock.now(), tz=timezone.utc),
            records=records,
        )
        try:
            deliver(self.options.on_failure, failed)
        except Exception as exc:
            log.exception("on_failure of consumer %r failed; retrying the delivery", self.name)
            return Outcome(error=f"on_failure delivery failed: {exc!r}", function_error=True)
        return Outcome()

    # -- outcomes (under the App lock) -----------------------------------------

    def timeout(self, work: Work) -> None:
        """The invocation ran past its deadline: it counts as failed; its result will be ignored."""
        work.timed_out = True
        assert self.options.timeout is not None
        self.finish(
            work,
            Outcome(error=f"Task timed out after {self.options.timeout:.2f} seconds", function_error=True),
        )

    def finish(self, work: Work, outcome: Outcome) -> None:
        self.in_flight -= 1
        now = self.clock.now()
        state = work.shard
        dispatcher = state.dispatcher
        counters = self.counters
        if work.kind != INVOKE:
            if outcome.error is not None:
                dispatcher.defer(work.lane, now + DELIVERY_RETRY_DELAY)
                return
            dispatcher.discarded(work.lane, now)
            counters["dead_lettered"] += work.count
            self._checkpoint(state)
            return
        counters["invocations"] += 1
        self.iterator_age_ms = max(0, int(now * 1000) - work.last_arrival_ms)
        if outcome.error is None and not outcome.failed:
            dispatcher.complete(work.lane, now)
            counters["records_done"] += work.count
            self._checkpoint(state)
            return
        jitter = self.clock.random()
        if outcome.failed:
            state.last_error[work.lane] = (None, False)
            verdict = dispatcher.partial(work.lane, outcome.done, now, jitter)
            counters["records_done"] += outcome.done
            if outcome.done:
                self._checkpoint(state)
        else:
            counters["errors"] += 1
            state.last_error[work.lane] = (outcome.error, outcome.function_error)
            verdict = dispatcher.fail(work.lane, now, jitter)
        if verdict == "retry":
            counters["retries"] += 1
        elif verdict == "split":
            counters["bisects"] += 1

    def abandon(self, work: Work) -> None:
        """A stop without drain: the action goes back unchanged, to be done again."""
        self.in_flight -= 1
        work.shard.dispatcher.release(work.lane)

    def _checkpoint(self, state: ShardState) -> None:
        dispatcher = state.dispatcher
        seq = dispatcher.checkpoint()
        if seq >= 0 and (state.checkpoint is None or seq > state.checkpoint):
            state.checkpoint = seq
        # Lanes may have moved even when the shard checkpoint did not.
        progress = ShardProgress(seq, dispatcher.lane_progress())
        self.store.save(self.name, {state.shard_id: progress})
        self.counters["checkpoints_written"] += 1

    def checkpoints(self) -> dict[int, int | None]:
        return {shard_id: state.checkpoint for shard_id, state in self.shards.items()}

    def metrics(self) -> dict[str, int | float]:
        out: dict[str, int | float] = dict(self.counters)
        out["iterator_age_ms"] = self.iterator_age_ms
        out["concurrent_executions"] = self.in_flight
        return out

