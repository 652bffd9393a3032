"""The runtime of one queue consumer: receive batches, invoke, delete or let them come back.

``QueueConsumer`` follows the scheduler's ``Consumer`` protocol (see
``streamcore.scheduler``) with one unit, the queue. What it does is SQS's
event source mapping (SEMANTICS 3):

- a batch is up to ``batch_size`` visible messages (waiting up to
  ``batch_window`` for a fuller one); they stay invisible for the visibility
  timeout (made longer per SEMANTICS 0.8 when ``batch_window + timeout``
  exceeds it) while the handler runs;
- on success the batch is deleted; on an error (exception, timeout, invalid
  partial response) nothing is deleted and every message comes back once its
  visibility timeout passed; with ``report_failures`` only the messages the
  handler lists come back and the rest are deleted;
- a message received more than the queue's ``max_receive_count`` times goes to
  its dead-letter queue instead (counted in ``dead_lettered``);
- poller scaling (3.6): 5 concurrent batches to start, up to 300 more per
  minute (on the clock) while a backlog remains, never above
  ``max_concurrency`` or 1000; a failed invocation takes one away (down to 2).
  FIFO queues deliver one batch per message group at a time, so they also
  never run more batches than there are groups with messages.

Every method except ``invoke`` runs under the App's lock.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from streamcore.batch import Batch
from streamcore.clock import Clock
from streamcore.consumer import BASE_COUNTERS
from streamcore.errors import ConfigError
from streamcore.failures import InvalidResponse, reported_ids, timeout_error
from streamcore.options import DEFAULT_MAX_BATCH_BYTES
from streamcore.sources.queue import QueueBase, Received

log = logging.getLogger("streamcore")

Handler = Callable[[Batch], Any]

COUNTERS = (*BASE_COUNTERS, "messages_deleted")

# Options of stream consumers only; a queue consumer rejects each by name.
STREAM_ONLY = (
    "bisect_on_error",
    "max_retries",
    "max_record_age",
    "parallelization",
    "tumbling_window",
    "starting_position",
    "starting_timestamp",
    "starting_sequence",
    "retry_backoff",
    "max_state_bytes",
)

START_CONCURRENCY = 5  # concurrent batches a new consumer starts with (SEMANTICS 3.6)
MIN_CONCURRENCY = 2  # failures never take it below this
MAX_CONCURRENCY = 1000
SCALE_PER_SECOND = 300 / 60  # batches added per second of clock time while a backlog remains
VISIBILITY_MARGIN = 30.0  # SEMANTICS 0.8
POLL_INTERVAL = 0.1  # LocalQueue on the system clock: how often to look for other processes' sends
ERROR_HOLD = 1.0  # clock seconds a consumer waits after a receive failed (e.g. an I/O error)

INVOKE = 0
REDRIVE = 1  # only messages to move to the dead-letter queue, no invocation


@dataclass(frozen=True, slots=True)
class QueueOptions:
    """Validated options of a queue consumer (see ``queue_options``)."""

    batch_size: int = 10
    batch_window: float = 0.0
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    max_concurrency: int | None = None
    report_failures: bool = False
    timeout: float | None = None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def queue_options(
    *,
    fifo: bool = False,
    batch_size: int | None = None,
    batch_window: float = 0.0,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    max_concurrency: int | None = None,
    report_failures: bool = False,
    timeout: float | None = None,
    on_failure: Any = None,
    **stream_only: Any,
) -> QueueOptions:
    """Validate queue-consumer options; raises ``ConfigError`` naming the first bad one.

    ``batch_size`` 1..10000 (default 10; FIFO at most 10), ``batch_window``
    0..300 seconds (FIFO: 0), ``max_concurrency`` None or 2..1000, ``timeout``
    None or seconds > 0. ``on_failure`` is not for queues (the dead-letter queue
    is configured on the queue), and the stream options (``bisect_on_error``,
    ``max_retries``, ``max_record_age``, ``parallelization``, ``tumbling_window``,
    ``starting_position``, ...) are rejected by name.
    """
    for name in stream_only:
        if name not in STREAM_ONLY:
            raise TypeError(f"queue_options() got an unexpected keyword argument {name!r}")
    for name in STREAM_ONLY:
        if name in stream_only:
            raise ConfigError(name, stream_only[name], f"not set: {name} is for stream consumers only")
    if on_failure is not None:
        raise ConfigError(
            "on_failure",
            on_failure,
            "None for a queue consumer (give the queue dead_letter= and max_receive_count=)",
        )
    high = 10 if fifo else 10_000
    if batch_size is None:
        size = 10
    elif not _is_int(batch_size) or not 1 <= batch_size <= high:
        what = " for a FIFO queue" if fifo else ""
        raise ConfigError("batch_size", batch_size, f"an integer in 1..{high}{what}")
    else:
        size = int(batch_size)
    if not _is_number(batch_window) or not 0 <= batch_window <= 300:
        raise ConfigError("batch_window", batch_window, "seconds in 0..300")
    if fifo and batch_window != 0:
        raise ConfigError("batch_window", batch_window, "0 for a FIFO queue (no batching window)")
    if not _is_int(max_batch_bytes) or max_batch_bytes < 1:
        raise ConfigError("max_batch_bytes", max_batch_bytes, "an integer >= 1")
    if max_concurrency is not None and (not _is_int(max_concurrency) or not 2 <= max_concurrency <= 1000):
        raise ConfigError("max_concurrency", max_concurrency, "None or an integer in 2..1000")
    if not isinstance(report_failures, bool):
        raise ConfigError("report_failures", report_failures, "True or False")
    if timeout is not None and (not _is_number(timeout) or timeout <= 0):
        raise ConfigError("timeout", timeout, "None or seconds > 0")
    return QueueOptions(
        batch_size=size,
        batch_window=float(batch_window),
        max_batch_bytes=int(max_batch_bytes),
        max_concurrency=max_concurrency,
        report_failures=report_failures,
        timeout=None if timeout is None else float(timeout),
    )


def failed_message_ids(result: Any) -> list[Any]:
    """The message ids a handler reported failed (SEMANTICS 3.3); [] is a success.

    Success: None, ``""``, ``[]``, ``{}``, an empty ``BatchFailures`` or
    ``{"batchItemFailures": None | []}``. Raises ``InvalidResponse`` (the whole
    batch fails) for any other value that is not a well-formed list of
    non-empty identifiers.
    """
    ids = reported_ids(result)
    for item_id in ids:
        if item_id is None or item_id == "":
            raise InvalidResponse(f"itemIdentifier {item_id!r} is empty or null")
        if not isinstance(item_id, str):
            raise InvalidResponse(f"itemIdentifier {item_id!r} is not a message id")
    return ids


class QueueUnit:
    """The scheduler's unit of a queue consumer: the queue itself."""

    __slots__ = ("key",)

    def __init__(self) -> None:
        self.key = 0


@dataclass(slots=True, eq=False)  # identity hash: works sit in a set while in flight
class Work:
    """A received batch to invoke the handler on, or messages to move to the dead-letter queue."""

    consumer: QueueConsumer
    unit: QueueUnit
    epoch: int
    kind: int
    received: Received
    deadline: float = float("inf")
    thread: int = 0
    timed_out: bool = False


@dataclass(slots=True)
class Outcome:
    """What an invocation produced. ``error`` None and no ``failed`` is a success."""

    error: str | None = None
    function_error: bool = False
    failed: list[int] | None = None  # partial response: positions of the failed messages


class QueueConsumer:
    """A handler attached to a ``MemoryQueue`` or ``LocalQueue`` with validated options."""

    def __init__(
        self,
        name: str,
        handler: Handler,
        queue: QueueBase,
        options: QueueOptions,
        clock: Clock,
        scheduler: Any = None,
    ) -> None:
        self.name = name
        self.handler = handler
        self.queue = queue
        self.source = queue
        self.stream = queue  # App.close detaches every consumer's ``stream``
        self.options = options
        self.clock = clock
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.iterator_age_ms = 0
        self.in_flight = 0  # invocations running
        self._unit = QueueUnit()
        self._cap = options.max_concurrency or MAX_CONCURRENCY
        self._limit = float(min(START_CONCURRENCY, self._cap))
        self._scaled_at = clock.now()
        self._backlog = False
        self._window_start: float | None = None
        self._hold_until = float("-inf")  # after a failed receive, nothing starts before this
        # SEMANTICS 0.8: a batch stays invisible at least as long as it may take.
        visibility = queue.visibility_timeout
        longest = options.batch_window + (options.timeout or 0.0)
        if longest > visibility:
            visibility = longest + VISIBILITY_MARGIN
        self.visibility = visibility
        self._poll = getattr(queue, "polls", False) and not clock.virtual
        self._scheduler = scheduler
        self.woken: list[QueueUnit] = []  # the scheduler protocol's; one unit never waits on another

    # -- scheduling (under the App lock) ----------------------------------------

    def units(self) -> list[QueueUnit]:
        return [self._unit]

    def workers_wanted(self) -> int:
        """As many workers as the poller scaling allows batches now (it grows them as it scales)."""
        return self.concurrency

    def _grow_workers(self) -> None:
        if self._scheduler is not None:
            self._scheduler.resize_workers()

    @property
    def concurrency(self) -> int:
        """The poller scaling's current limit of concurrent batches."""
        return max(1, int(self._limit))

    def _scale(self, now: float) -> None:
        elapsed = now - self._scaled_at
        if elapsed <= 0:
            return
        self._scaled_at = now
        start = min(START_CONCURRENCY, self._cap)
        if self._backlog:
            before = self.concurrency
            self._limit = min(float(self._cap), self._limit + SCALE_PER_SECOND * elapsed)
            if self.concurrency > before:
                self._grow_workers()
        elif self._limit > start:
            self._limit = max(float(start), self._limit - SCALE_PER_SECOND * elapsed)

    def _ready_at(self, now: float) -> float:
        """When the next batch may be received (inf: at the limit, or nothing to receive)."""
        if self.in_flight >= self.concurrency:
            return float("inf")
        if now < self._hold_until:
            return self._hold_until
        if not self.queue._receivable():
            return float("inf")
        window = self.options.batch_window
        if not window or self._window_start is None:
            return now
        if self.queue._visible() >= self.options.batch_size:
            return now
        return self._window_start + window

    def next_work(self, unit: QueueUnit, epoch: int) -> Work | None:
        """Receive the next batch, if one may start now."""
        now = self.clock.now()
        self._scale(now)
        queue = self.queue
        if now < self._hold_until:
            return None
        if self.in_flight >= self.concurrency:
            self._backlog = queue._receivable()
            return None
        options = self.options
        if options.batch_window:
            if not queue._receivable():
                self._backlog = False
                self._window_start = None
                return None
            if self._window_start is None:
                self._window_start = now
            if now < self._window_start + options.batch_window and queue._visible() < options.batch_size:
                return None
        try:
            received = queue._take(options.batch_size, self.visibility, options.max_batch_bytes)
        except Exception:  # e.g. a LocalQueue whose file is locked or gone: try again later
            log.exception("consumer %r: receiving from queue %r failed", self.name, queue.name)
            self._hold_until = now + ERROR_HOLD
            return None
        self._window_start = None
        if received is None:
            self._backlog = False
            return None
        counters = self.counters
        if received.dead is not None:
            counters["dead_lettered"] += received.dead.count
        if received.records is None:
            return Work(self, unit, epoch, REDRIVE, received)
        counters["records_in"] += received.first_receives
        if received.attempt > 1:
            counters["retries"] += 1
        self.in_flight += 1
        # A backlog: messages wait while every allowed batch is running.
        self._backlog = received.backlog and self.in_flight >= self.concurrency
        work = Work(self, unit, epoch, INVOKE, received)
        if options.timeout is not None:
            work.deadline = now + options.timeout
        return work

    def next_deadline(self) -> tuple[float, float]:
        """``(due, upcoming)``: when a batch may start, and the next later moment anything may change."""
        now = self.clock.now()
        due = self._ready_at(now)
        upcoming = self.queue._next_due()
        if now < due < upcoming:
            upcoming = due
        if self._poll and upcoming < float("inf"):
            upcoming = min(upcoming, now + POLL_INTERVAL)  # other processes may send meanwhile
        return due, upcoming

    # -- invocation (outside the App lock) -------------------------------------

    def invoke(self, work: Work) -> Outcome:
        """Move redriven messages to the dead-letter queue, then run the handler; never raises."""
        received = work.received
        if received.dead is not None:
            try:
                self.queue._send_dead(received.dead)
            except Exception:
                log.exception(
                    "consumer %r: moving %d messages of queue %r to its dead-letter queue failed",
                    self.name, received.dead.count, self.queue.name,
                )
        if work.kind == REDRIVE:
            return Outcome()
        assert received.records is not None
        batch = Batch(
            received.records,
            source=self.queue.name,
            shard=0,
            lane=0,
            first_seq=received.first_index,
            last_seq=received.last_index,
            attempt=received.attempt,
        )
        try:
            result = self.handler(batch)
        except BaseException as exc:  # a failing handler is an outcome, not a crash
            return Outcome(error=f"{type(exc).__name__}: {exc}", function_error=True)
        if not self.options.report_failures:
            return Outcome()
        try:
            failed = self._failed_positions(result, received)
        except InvalidResponse as exc:
            return Outcome(error=f"invalid batch response: {exc}")
        return Outcome(failed=failed) if failed else Outcome()

    def _failed_positions(self, result: Any, received: Received) -> list[int]:
        ids = failed_message_ids(result)
        if not ids:
            return []
        positions = self.queue._locate(received, ids)
        for item_id, position in zip(ids, positions, strict=True):
            if position < 0:
                raise InvalidResponse(f"itemIdentifier {item_id!r} is not a message of this batch")
        return sorted(set(positions))

    # -- outcomes (under the App lock) -----------------------------------------

    def finish(self, work: Work, outcome: Outcome) -> None:
        if work.kind == REDRIVE:
            return
        self.in_flight -= 1
        received = work.received
        counters = self.counters
        counters["invocations"] += 1
        now = self.clock.now()
        self.iterator_age_ms = max(0, int(now * 1000) - received.last_sent_ms)
        n = len(received)
        if outcome.error is None:
            failed: Sequence[int] = outcome.failed or ()
            try:
                counters["messages_deleted"] += self.queue._settle(received, failed)
                if not self.in_flight:  # no batch running whose next receive would carry the deletes
                    self.queue._flush()
            except Exception:  # the messages come back after their visibility timeout
                log.exception("consumer %r: deleting a batch from %r failed", self.name, self.queue.name)
            counters["records_done"] += n - len(failed)
            return
        # The messages stay invisible until their visibility timeout passes, then come back.
        counters["errors"] += 1
        self._limit = max(float(min(MIN_CONCURRENCY, self._cap)), self._limit - 1)

    def timeout(self, work: Work) -> None:
        """The invocation ran past its deadline: it failed; its result will be ignored."""
        work.timed_out = True
        assert self.options.timeout is not None
        self.finish(work, Outcome(error=timeout_error(self.options.timeout), function_error=True))

    def abandon(self, work: Work) -> None:
        """A stop without drain: the batch's messages become visible again at once."""
        if work.kind == REDRIVE:
            return  # the worker still hands them to the dead-letter queue
        self.in_flight -= 1
        self.queue._release(work.received)

    # -- observing -------------------------------------------------------------

    def checkpoints(self) -> dict[int, int | None]:
        """Queues have no checkpoints: a message is done once deleted."""
        return {}

    def metrics(self) -> dict[str, int | float]:
        out: dict[str, int | float] = dict(self.counters)
        counts = self.queue.counts()
        oldest = self.queue._oldest_sent_ms()
        now_ms = int(self.clock.now() * 1000)
        out["iterator_age_ms"] = self.iterator_age_ms
        out["concurrent_executions"] = self.in_flight
        out["visible"] = counts["visible"]
        out["in_flight"] = counts["in_flight"]
        out["age_of_oldest_ms"] = 0 if oldest is None else max(0, now_ms - oldest)
        out["concurrency"] = self.concurrency
        return out
