"""The runtime of one stream consumer: a ``ShardDispatcher`` per shard, invocations, outcomes.

The App's scheduler calls these methods; every method but ``invoke`` runs
under the App's lock. ``invoke`` reads the records and runs the handler (or
delivers discarded records to ``on_failure``) without it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from streamcore import _hashing
from streamcore._aggregate import BatchBinding
from streamcore._dispatch import FINAL, INVOKE, ShardDispatcher
from streamcore.aggregate import handed
from streamcore.batch import Batch, Window, make_batch
from streamcore.checkpoints import CheckpointStore, make_progress
from streamcore.clock import Clock
from streamcore.failures import (
    CONDITIONS,
    FailedBatch,
    InvalidResponse,
    deliver,
    failed_seqs,
    timeout_error,
)
from streamcore.options import StreamOptions
from streamcore.sources.memory import MemoryStream
from streamcore.sources.shardlog import ShardLog
from streamcore.windows import copy_state, state_nbytes, window_bounds

log = logging.getLogger("streamcore")

Handler = Callable[[Batch], Any]

# The counters every consumer keeps (API.md "Metrics"); each kind adds its own.
BASE_COUNTERS = (
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
# A stream consumer counts checkpoints_written in an attribute (one per batch: an
# attribute costs less than a dict item); metrics() adds it.
COUNTERS = (*(c for c in BASE_COUNTERS if c != "checkpoints_written"), "records_expired")

# Seconds before a failed on_failure delivery is tried again (the lane waits meanwhile).
DELIVERY_RETRY_DELAY = 1.0

_NEVER = float("inf")  # the deadline of an invocation without a timeout

# Objects made once per batch (a Work, a success's Outcome) are made with this and
# their slots set one by one: a class call goes through type.__call__ and the
# generated __init__'s frame, which costs about twice as much.
_new = object.__new__

_BOUNDS_KEPT = 64  # window bounds a consumer keeps (windows open on its shards at once)


class ShardState:
    """One shard as one consumer sees it."""

    __slots__ = (
        "binding",
        "checkpoint",
        "dispatcher",
        "ended",
        "key",
        "last_error",
        "log",
        "shard_id",
        "windows",
    )

    def __init__(self, log: ShardLog, dispatcher: ShardDispatcher, checkpoint: int | None) -> None:
        self.shard_id = log.shard_id
        self.key = log.shard_id  # the scheduler's unit key
        self.log = log
        self.dispatcher = dispatcher
        self.checkpoint = checkpoint  # last reported checkpoint, None before any
        # A closed (resharded) shard done to its end: SHARD_END, its children may start.
        self.ended = False
        # Per lane: the last failure's message and whether it was an exception/timeout.
        self.last_error: dict[int, tuple[str | None, bool]] = {}
        # Per lane: its open tumbling window and that window's committed state, as
        # a checkpoint saves them (a copy of this dict is the checkpoint's states).
        self.windows: dict[int, tuple[int, dict[str, Any]]] = {}
        # The binding of the stored batch the last invocation's records were sliced
        # from, while the shard's next batches come from it too.
        self.binding: BatchBinding | None = None


@dataclass(slots=True, eq=False)  # identity hash: works sit in a set while in flight
class Work:
    """One action handed from the scheduler to a worker: an invocation or a discard."""

    consumer: StreamConsumer
    unit: ShardState  # the shard
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
    deadline: float = _NEVER  # clock time at which the invocation times out
    window: int | None = None  # tumbling window index
    state: dict[str, Any] | None = None  # this invocation's private copy of the window state
    early: bool = False  # a closing invocation because the state outgrew its limit
    thread: int = 0  # ident of the worker thread running it
    timed_out: bool = False


@dataclass(slots=True)
class Outcome:
    """What an action produced. ``error`` None and ``failed`` empty is a success.

    A success, built once per batch, is made by ``_success`` (see ``_new``).
    """

    state: dict[str, Any] | None = None  # tumbling windows: the state to commit
    state_bytes: int = 0  # its serialised size, for the max_state_bytes limit
    error: str | None = None
    function_error: bool = False  # an exception or a timeout, rather than a bad response
    failed: Sequence[int] = ()  # partial response: failed seqs
    done: int = 0  # partial response: records before the lowest failed seq


def _success(state: dict[str, Any] | None, state_bytes: int) -> Outcome:
    """``Outcome(state, state_bytes)``, made as ``_new`` says."""
    outcome: Outcome = _new(Outcome)
    outcome.state = state
    outcome.state_bytes = state_bytes
    outcome.error = None
    outcome.function_error = False
    outcome.failed = ()
    outcome.done = 0
    return outcome


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
        self.source = stream
        self.options = options
        self.store = store
        self.clock = clock
        self.counters = dict.fromkeys(COUNTERS, 0)
        # Options read on every invocation (StreamOptions is frozen).
        self._timeout = options.timeout
        self._window_ms = int(options.tumbling_window * 1000) if options.tumbling_window else 0
        self._report_failures = options.report_failures
        self._max_state_bytes = options.max_state_bytes
        # Window index -> Window: every invocation of a window hands the handler the
        # same bounds (a dict: lru_cache's call costs as much as making them).
        self._bounds: dict[int, Window] = {}
        self.checkpoints_written = 0  # a counter, kept out of `counters` (one per batch)
        self._finished_at = 0.0  # clock time of the last finished invocation
        self._finished_arrival_ms = 0  # and the arrival of its last record
        self.in_flight = 0
        # Records read ahead of the oldest one not done, per shard. One lane only
        # ever needs the next few batches; with several lanes a lane blocked by a
        # failing batch must not stop the others, so they may read much further.
        if options.parallelization == 1:
            self.read_ahead = 4 * options.batch_size
            # Refill only once fewer than two batches are left: half the ingest calls,
            # and a full batch (and the record after it) is always there to cut.
            self.refill_below = 2 * options.batch_size
        else:
            # Several lanes share the read-ahead: a lane blocked by a failing batch may
            # hold much of it, so the others read on as long as there is any room.
            self.read_ahead = max(64 * options.batch_size, 1 << 20)
            self.refill_below = self.read_ahead
        # Units the scheduler should look at again: children whose parents just ended.
        self.woken: list[ShardState] = []
        self._saved = store.load(name)
        self.shards: dict[int, ShardState] = {}
        for shard_id in stream.all_shard_ids:  # parents before children: ids only grow
            self._add_shard(shard_id, discovered=False)

    def _add_shard(self, shard_id: int, *, discovered: bool) -> None:
        options = self.options
        log = self.stream.shard_log(shard_id)
        progress = self._saved.get(shard_id)
        checkpoint = progress.checkpoint if progress is not None and progress.checkpoint >= 0 else None
        # A child of a shard this consumer read starts at its beginning, whatever the
        # starting position (KCL: child leases start at TRIM_HORIZON).
        from_start = discovered or any(p in self._saved for p in log.parents)
        dispatcher = ShardDispatcher(
            options.parallelization,
            options.batch_size,
            options.max_batch_bytes,
            options.batch_window,
            self._start_seq(log, checkpoint, from_start),
            options.bisect_on_error,
            options.max_retries,
            options.max_record_age,
            options.retry_backoff,
            options.tumbling_window or 0.0,
        )
        state = ShardState(log, dispatcher, checkpoint)
        if progress is not None and len(progress.lanes) == options.parallelization:
            dispatcher.restore_lanes(progress.lanes)
            if options.tumbling_window:
                for lane, (window, window_state) in progress.states.items():
                    dispatcher.restore_window(lane, window)
                    state.windows[lane] = (window, window_state)
                    if state_nbytes(window_state) > options.max_state_bytes:
                        # Saved right after the state outgrew its limit: the early
                        # closing that was due is due again (the flag is not saved).
                        dispatcher.terminate_early(lane)
        self.shards[shard_id] = state

    def _start_seq(self, log: ShardLog, saved: int | None, from_start: bool = False) -> int:
        opts = self.options
        if saved is not None:
            start = saved + 1
        elif from_start:
            start = log.trim_seq
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

    def units(self) -> list[ShardState]:
        if len(self.shards) != self.stream.shard_count:  # a reshard made new shards
            for shard_id in self.stream.all_shard_ids:
                if shard_id not in self.shards:
                    self._add_shard(shard_id, discovered=True)
        return list(self.shards.values())

    def _blocked(self, state: ShardState) -> bool:
        """Whether a child shard still waits for a parent to reach SHARD_END (SEMANTICS 0.6)."""
        shards = self.shards
        return any(p in shards and not shards[p].ended for p in state.log.parents)

    def _end_shard(self, state: ShardState) -> None:
        """A closed shard is done to its end: checkpoint it there and wake its children."""
        state.ended = True
        self._checkpoint(state)
        self.woken.extend(self.shards[c] for c in state.log.children if c in self.shards)

    def workers_wanted(self) -> int:
        return self.options.parallelization * len(self.shards)

    def _ingest(self, state: ShardState, room: int, now: float) -> None:
        """Read up to ``room`` more records of the shard's log into its dispatcher."""
        dispatcher = state.dispatcher
        log = state.log
        before = dispatcher.next_read
        with self.stream._lock:
            if dispatcher.next_read < log.trim_seq:
                self.counters["records_expired"] += log.trim_seq - dispatcher.next_read
                dispatcher.skip_to(log.trim_seq)
            for chunk, start in log.chunks_from(dispatcher.next_read):
                stop = min(chunk.records.num_rows, start + room)
                if dispatcher.n_lanes == 1:  # one lane needs no key hashes, nor a slice
                    dispatcher.ingest(chunk.first_seq, None, chunk.sizes, chunk.arrival_ms, start, now, stop)
                else:
                    hashes = _hashing.hash_array(chunk.records.column(1).slice(start, stop - start))
                    sizes = chunk.sizes.slice(start, stop - start)
                    dispatcher.ingest(chunk.first_seq + start, hashes, sizes, chunk.arrival_ms, 0, now)
                room -= stop - start
                if room <= 0:
                    break
        self.counters["records_in"] += dispatcher.next_read - before

    def next_work(self, state: ShardState, epoch: int) -> Work | None:
        """Start the shard's next ready action, if any."""
        dispatcher = state.dispatcher
        log = state.log
        if state.ended or (log.parents and self._blocked(state)):
            return None
        if log.trim_seq > 0 and dispatcher.checkpoint() + 1 < log.trim_seq:
            # Retention removed records this consumer had read but not done: they are lost.
            self.counters["records_expired"] += dispatcher.drop_before(log.trim_seq)
            state.binding = None  # may hold a stored batch retention dropped
            self._checkpoint(state)
        now = self.clock.now()  # one reading serves the ingest and the poll
        if log.next_seq > dispatcher.next_read:
            pending = dispatcher.pending()
            if pending < self.refill_below:
                self._ingest(state, self.read_ahead - pending, now)
        if log.closed and dispatcher.next_read >= log.next_seq and not dispatcher.at_end:
            dispatcher.end_of_shard()
        polled = dispatcher.poll_batch(now)
        if polled is None:
            if dispatcher.at_end and dispatcher.finished():
                self._end_shard(state)
            return None
        lane, count, attempt, kind, first, last, contiguous, last_arrival_ms, window, early = polled
        self.in_flight += 1
        deadline = _NEVER
        if self._timeout is not None and kind in (INVOKE, FINAL):
            deadline = now + self._timeout
        window_state = None
        if window is not None:  # tumbling windows: an invocation or a closing
            committed = state.windows.get(lane)
            window_state = {} if committed is None else copy_state(committed[1])
        base = first
        offsets = None
        if not contiguous:
            base = log.chunk_start(first)
            offsets = dispatcher.batch_offsets(lane, base)
        work: Work = _new(Work)  # not Work(...): see _new
        work.consumer = self
        work.unit = state
        work.lane = lane
        work.count = count
        work.attempt = attempt
        work.kind = kind
        work.first_seq = first
        work.last_seq = last
        work.contiguous = contiguous
        work.base = base
        work.offsets = offsets
        work.last_arrival_ms = last_arrival_ms
        work.epoch = epoch
        work.deadline = deadline
        work.window = window
        work.state = window_state
        work.early = early
        work.thread = 0
        work.timed_out = False
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

    def invoke(self, work: Work) -> Outcome:
        """Run the handler on the batch, or deliver a discard; never raises."""
        unit = work.unit
        log = unit.log
        stored = None  # the stored batch the records are a slice of, at `offset`
        offset = 0
        try:
            if work.kind == FINAL:
                records = log.empty()
            else:
                with self.stream._lock:
                    if work.contiguous:
                        records, stored, offset = log.read_slice(work.first_seq, work.count)
                    else:
                        assert work.offsets is not None
                        records = log.take(work.base, work.last_seq, work.offsets)
        except Exception as exc:  # the log lost the records (retention): say so, retry later
            return Outcome(error=f"cannot read records: {exc!r}", function_error=True)
        kind = work.kind
        if kind not in (INVOKE, FINAL):
            return self._discard(work, records)
        window = None
        if work.window is not None:
            window = self._bounds.get(work.window)
            if window is None:
                if len(self._bounds) >= _BOUNDS_KEPT:
                    self._bounds.clear()  # long closed windows
                window = self._bounds[work.window] = window_bounds(work.window, self._window_ms)
        batch = make_batch(
            records,
            self.stream.name,
            work.unit.shard_id,
            work.lane,
            work.first_seq,
            work.last_seq,
            work.attempt,
            window,
            work.state,
            kind == FINAL,
            work.early,
        )
        # An Aggregator may fold these in the background, finding their columns in the
        # binding of the stored batch (one per shard: its next batches are slices of it).
        source = None
        if stored is not None:
            source = unit.binding
            if source is None or source.batch is not stored:
                source = BatchBinding(stored)
            # Kept for the shard's next batches only while they are cut from the same
            # stored batch: a binding must not hold a batch the log has let go of.
            unit.binding = source if offset + work.count < stored.num_rows else None
        handed.records, handed.source, handed.offset = records, source, offset
        try:
            result = self.handler(batch)
        except BaseException as exc:  # a failing handler is an outcome, not a crash
            return Outcome(error=f"{type(exc).__name__}: {exc}", function_error=True)
        finally:
            handed.records = handed.source = None
        state = None
        state_bytes = 0
        if window is not None:
            state = batch.state
            if isinstance(result, dict) and "state" in result:
                state = result["state"]
            if not isinstance(state, dict):
                return Outcome(error=f"invalid window state: {type(state).__name__}, expected a dict")
            if kind != FINAL:  # a closing invocation's state is dropped: neither kept nor saved
                try:
                    state_bytes = state_nbytes(state, self._max_state_bytes)
                except TypeError as exc:
                    return Outcome(error=f"invalid window state: {exc}")
        if not self._report_failures:
            return _success(state, state_bytes)
        seqs = records.column("seq")
        try:
            failed = failed_seqs(result, seqs)
        except InvalidResponse as exc:
            return Outcome(error=f"invalid batch response: {exc}")
        if not failed:
            return _success(state, state_bytes)
        lowest = min(failed)
        done = lowest - work.first_seq if work.contiguous else pc.index(seqs, lowest).as_py()
        return Outcome(state, state_bytes, failed=failed, done=done)

    def _discard(self, work: Work, records: pa.RecordBatch) -> Outcome:
        message, function_error = work.unit.last_error.get(work.lane, (None, False))
        arrivals = records.column("arrival")
        failed = FailedBatch(
            consumer=self.name,
            source=self.stream.name,
            shard=work.unit.shard_id,
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
        self.finish(work, Outcome(error=timeout_error(self.options.timeout), function_error=True))

    def finish(self, work: Work, outcome: Outcome) -> None:
        self.in_flight -= 1
        now = self.clock.now()
        state = work.unit
        dispatcher = state.dispatcher
        counters = self.counters
        kind = work.kind
        if kind != FINAL and work.first_seq < state.log.trim_seq:
            dispatcher.release(work.lane)  # its records expired meanwhile; next_work drops them
            return
        if kind not in (INVOKE, FINAL):
            if outcome.error is not None:
                dispatcher.defer(work.lane, now + DELIVERY_RETRY_DELAY)
                return
            dispatcher.discarded(work.lane, now)
            counters["dead_lettered"] += work.count
            self._checkpoint(state)
            return
        counters["invocations"] += 1
        # The iterator age is worked out when asked for (metrics), from the last of these.
        self._finished_at = now
        self._finished_arrival_ms = work.last_arrival_ms
        if outcome.error is None and not outcome.failed:
            if work.window is not None:
                self._commit_window(work, outcome)
            dispatcher.complete(work.lane, now)
            counters["records_done"] += work.count
            self._checkpoint(state)
            return
        jitter = self.clock.random()
        verdict: Literal["retry", "split", "discard"]
        if outcome.failed:
            if work.window is not None:
                self._commit_window(work, outcome)
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

    def _commit_window(self, work: Work, outcome: Outcome) -> None:
        """Commit a windowed invocation's state (``work.window`` is not None)."""
        windows = work.unit.windows
        assert work.window is not None
        if work.kind == FINAL:
            if work.early:
                windows[work.lane] = (work.window, {})  # the same window goes on with fresh state
            else:
                windows.pop(work.lane, None)
            return
        assert outcome.state is not None
        windows[work.lane] = (work.window, outcome.state)
        if outcome.state_bytes > self._max_state_bytes:
            work.unit.dispatcher.terminate_early(work.lane)

    def abandon(self, work: Work) -> None:
        """A stop without drain: the action goes back unchanged, to be done again."""
        self.in_flight -= 1
        work.unit.dispatcher.release(work.lane)

    def _checkpoint(self, state: ShardState) -> None:
        dispatcher = state.dispatcher
        seq, lanes = dispatcher.progress()
        if seq >= 0 and (state.checkpoint is None or seq > state.checkpoint):
            state.checkpoint = seq
        # Lanes may have moved even when the shard checkpoint did not.
        progress = make_progress(seq, lanes, dict(state.windows) if state.windows else None)
        self.store.save_shard(self.name, state.shard_id, progress)
        self.checkpoints_written += 1

    @property
    def iterator_age_ms(self) -> int:
        """Age of the last record of the last finished invocation, when it finished (ms)."""
        return max(0, int(self._finished_at * 1000) - self._finished_arrival_ms)

    def checkpoints(self) -> dict[int, int | None]:
        return {shard_id: state.checkpoint for shard_id, state in self.shards.items()}

    def metrics(self) -> dict[str, int | float]:
        out: dict[str, int | float] = dict(self.counters)
        out["checkpoints_written"] = self.checkpoints_written
        out["iterator_age_ms"] = self.iterator_age_ms
        out["concurrent_executions"] = self.in_flight
        return out
