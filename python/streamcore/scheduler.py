"""The scheduler: which batch runs next, on which worker, and when time moves.

It runs any consumer that follows the ``Consumer`` protocol below (stream
consumers, queue consumers). A consumer splits its work into *units* (a
stream consumer's shards; a queue consumer's single queue) that each hand out
zero or more ready actions at a time. Units with possibly-ready work sit in a
FIFO ``ready`` queue (each at most once). Workers pull from it under one
lock, run the handler without the lock, and report the outcome. The thread that called ``App.run`` is the
coordinator: it owns time. When nothing can run now it finds the next timer
(a batching window, a retry back-off, a sleeping handler) and either waits
for it (system clock) or jumps the virtual clock straight to it.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any, Protocol

from streamcore.clock import Clock, VirtualClock
from streamcore.errors import AppStateError
from streamcore.executor import ThreadExecutor


class Unit(Protocol):
    key: Any  # hashable, unique within its consumer


class Work(Protocol):
    """One action (an invocation or a discard) handed to a worker."""

    consumer: Consumer
    unit: Any
    epoch: int  # the scheduler's epoch when it was handed out
    deadline: float  # clock time at which an invocation times out (inf: never)
    thread: int  # set by the worker: ident of the thread running it
    timed_out: bool


class Consumer(Protocol):
    """What the scheduler needs of a consumer. Every method except ``invoke`` is
    called with the scheduler's lock held and must not block."""

    source: Any  # the source whose puts/sends wake this consumer
    counters: dict[str, int]
    woken: list[Any]  # units to look at again (a child shard whose parent ended); drained here

    def units(self) -> list[Any]: ...
    def workers_wanted(self) -> int: ...
    def next_work(self, unit: Any, epoch: int) -> Any: ...  # a Work, or None
    def invoke(self, work: Any) -> Any: ...  # runs without the lock; never raises
    def finish(self, work: Any, outcome: Any) -> None: ...
    def timeout(self, work: Any) -> None: ...
    def abandon(self, work: Any) -> None: ...
    def next_deadline(self) -> tuple[float, float]: ...  # (due, upcoming); see _dispatch


log = logging.getLogger("streamcore")

# Real seconds the coordinator waits between re-checks when it expects a notify
# anyway; only a safety net, so a missed wake-up costs this much and no more.
_RECHECK = 0.05


class Scheduler:
    """Owns the lock that serialises every dispatcher call of one App."""

    def __init__(self, clock: Clock, concurrency: int) -> None:
        self.clock = clock
        self.concurrency = concurrency
        self.lock = threading.Lock()
        self.work_cond = threading.Condition(self.lock)  # workers wait here
        self.state_cond = threading.Condition(self.lock)  # the coordinator waits here
        self.consumers: list[Consumer] = []
        self._ready: deque[tuple[Consumer, Any]] = deque()
        self._queued: set[tuple[int, Any]] = set()
        self._in_flight: set[Any] = set()
        self._idle_workers = 0
        self._workers_wanted = 0
        self._stuck = 0  # workers still running an invocation that timed out
        self._epoch = 0
        self.running = False
        self._stop_requested = False
        self._drain = True
        self._shutdown = False
        self._executor = ThreadExecutor(self._worker)
        if isinstance(clock, VirtualClock):
            clock.add_listener(self._wake_coordinator)

    # -- bookkeeping (under the lock) ------------------------------------------

    def add_consumer(self, consumer: Consumer) -> None:
        with self.lock:
            self.consumers.append(consumer)
            self.resize_workers()
            for unit in consumer.units():
                self._mark(consumer, unit)

    def resize_workers(self) -> None:
        """Grow the pool to what the consumers want now (under the lock).

        A consumer whose wish grows while running (a queue's poller scaling)
        calls this. Idle workers are not free (a finished batch may wake one),
        so the pool follows the wish rather than starting at ``concurrency``.
        """
        wanted = max(1, min(self.concurrency, sum(c.workers_wanted() for c in self.consumers)))
        if wanted > self._workers_wanted:
            self._workers_wanted = wanted
            if self.running:
                self._executor.ensure(wanted + self._stuck)

    def _mark(self, consumer: Consumer, unit: Any, *, wake: bool = True) -> None:
        key = (id(consumer), unit.key)
        if key not in self._queued:
            self._queued.add(key)
            self._ready.append((consumer, unit))
        if wake and self.running and self._idle_workers:
            self.work_cond.notify()

    def on_put(self, source: object, unit_keys: list[Any]) -> None:
        """A source got new records for the units ``unit_keys`` (called outside its lock)."""
        with self.lock:
            for consumer in self.consumers:
                if consumer.source is source:
                    wanted = set(unit_keys)
                    units = consumer.units()  # may grow: a reshard makes new shards
                    for unit in units:
                        if unit.key in wanted:
                            self._mark(consumer, unit)
            self.resize_workers()
            self.state_cond.notify()

    def _wake_coordinator(self) -> None:
        with self.lock:
            self.state_cond.notify()

    def _take_work(self) -> Any:
        ready = self._ready
        while ready:
            consumer, unit = ready[0]
            try:
                work = consumer.next_work(unit, self._epoch)
            except Exception:  # a consumer bug must not kill the worker and hang run()
                log.exception("next_work of %r failed; its unit waits for the next wake-up", consumer)
                work = None
            if consumer.woken:
                for other in consumer.woken:
                    self._mark(consumer, other)
                consumer.woken.clear()
            if work is not None:
                ready.rotate(-1)  # the shard may have more ready lanes; others go first
                if len(self._in_flight) + 1 >= self.concurrency and len(ready) > 1:
                    consumer.counters["throttles"] += 1
                return work
            ready.popleft()
            self._queued.discard((id(consumer), unit.key))
        return None

    # -- workers ---------------------------------------------------------------

    def _worker(self, worker_id: int) -> None:
        ident = threading.get_ident()
        with self.lock:
            while not self._shutdown:
                # One call per action, not the loop's own code: CPython 3.11 specialises
                # the bytecode of a function once it has been called a few times, but never
                # that of a loop still running in its first call (each attribute read here
                # would take the slow generic path for the thread's whole life).
                self._serve(ident)

    def _serve(self, ident: int) -> None:
        """Take the next action and run it, or wait idle until notified (under the lock)."""
        work = None
        if self.running and not self._stop_requested:
            work = self._take_work()
        if work is None:
            self._idle_workers += 1
            self.state_cond.notify()
            self.work_cond.wait()
            self._idle_workers -= 1
            return
        work.thread = ident
        self._in_flight.add(work)
        self.lock.release()
        try:
            outcome = work.consumer.invoke(work)
        finally:
            self.lock.acquire()
        if work.timed_out:  # already failed by the coordinator; the result is void
            self._stuck -= 1
            return
        self._in_flight.discard(work)
        if work.epoch == self._epoch:
            consumer = work.consumer
            consumer.finish(work, outcome)
            # This worker looks at the unit next itself: waking another costs more.
            # (_mark without its notify, inline: this runs once per batch.)
            key = (id(consumer), work.unit.key)
            if key not in self._queued:
                self._queued.add(key)
                self._ready.append((consumer, work.unit))
        # No notify of the coordinator here: this worker either takes the next work
        # (nothing for the coordinator to do) or goes idle, which notifies it.

    # -- the coordinator -------------------------------------------------------

    def run(self, *, until_idle: bool, timeout: float | None) -> None:
        with self.lock:
            if self.running:
                raise AppStateError("the App is already running")
            self.running = True
            self._stop_requested = False
            try:
                self._mark_all()
                self._executor.ensure(self._workers_wanted)
                self.work_cond.notify_all()
                self._coordinate(until_idle, timeout)
            finally:
                self.running = False
                self.state_cond.notify_all()

    def _coordinate(self, until_idle: bool, timeout: float | None) -> None:
        virtual = isinstance(self.clock, VirtualClock)
        end = float("inf") if timeout is None else self.clock.now() + timeout
        # One call per round, for the reason given in _worker.
        while self._coordinate_once(until_idle, end, virtual):
            pass

    def _coordinate_once(self, until_idle: bool, end: float, virtual: bool) -> bool:
        """One round of the coordinator: wait, or move time on. False: ``run`` returns."""
        clock = self.clock
        if self._stop_requested:
            if not self._drain:
                self._abandon_in_flight()
                return False
            if not self._in_flight:
                return False
            self.state_cond.wait(_RECHECK)
            return True
        if clock.now() >= end:
            return False
        self._expire_timeouts()
        in_flight = len(self._in_flight)
        if self._ready and (self._idle_workers or in_flight < self._workers_wanted):
            self.work_cond.notify()
            self.state_cond.wait(_RECHECK)
            return True
        sleeping = clock.sleeping_threads() if virtual else set()  # type: ignore[attr-defined]
        busy = [w for w in self._in_flight if w.thread not in sleeping]
        if busy:
            # A handler that runs (not sleeping on the clock) holds time still.
            wait = _RECHECK
            if not virtual:
                wait = min(wait, max(0.0, min(w.deadline for w in busy) - clock.now()))
            self.state_cond.wait(wait)
            return True
        # Nothing can run now: find the next moment something can.
        due = wake = float("inf")
        for consumer in self.consumers:
            d, u = consumer.next_deadline()
            due, wake = min(due, d), min(wake, u)
        if due <= clock.now() and (self._idle_workers or in_flight < self._workers_wanted):
            self._mark_all()  # defensive: something is ready that nobody queued
            self.state_cond.wait(_RECHECK)
            return True
        wake = min([wake, *(w.deadline for w in self._in_flight)])
        if virtual:
            wakeup = clock.next_wakeup()  # type: ignore[attr-defined]
            if wakeup is not None:
                wake = min(wake, wakeup)
        if until_idle and not in_flight and wake == float("inf"):
            return False
        wake = min(wake, end)
        if wake == float("inf"):
            self.state_cond.wait(_RECHECK)  # only a put can create work
        elif virtual:
            self.lock.release()
            try:
                clock.advance_to(wake)  # type: ignore[attr-defined]
            finally:
                self.lock.acquire()
        else:
            self.state_cond.wait(max(0.0, wake - clock.now()))
        self._mark_all()
        return True

    def _mark_all(self) -> None:
        for consumer in self.consumers:
            for unit in consumer.units():
                self._mark(consumer, unit)

    def _expire_timeouts(self) -> None:
        now = self.clock.now()
        expired = [w for w in self._in_flight if w.deadline <= now]
        for work in expired:
            self._in_flight.discard(work)
            work.consumer.timeout(work)
            self._mark(work.consumer, work.unit)
            self._stuck += 1
        if expired:  # keep the pool's capacity while stuck workers finish
            self._executor.ensure(self._workers_wanted + self._stuck)

    def _abandon_in_flight(self) -> None:
        for work in self._in_flight:
            work.consumer.abandon(work)
        self._in_flight.clear()
        self._epoch += 1  # late results of the abandoned invocations are ignored

    # -- stopping --------------------------------------------------------------

    def request_stop(self, drain: bool) -> None:
        with self.lock:
            # A stop without drain already asked for wins: its caller (maybe a handler,
            # which a drain would wait for) was promised a prompt return.
            self._drain = drain if not self._stop_requested else self._drain and drain
            self._stop_requested = True
            self.state_cond.notify_all()

    def wait_stopped(self) -> None:
        with self.lock:
            while self.running:
                self.state_cond.wait(_RECHECK)

    def shutdown(self) -> None:
        """Stop the workers for good (``App.close``)."""
        with self.lock:
            self._shutdown = True
            self.work_cond.notify_all()
        self._executor.join(timeout=1.0)
        self._executor.close()
        if isinstance(self.clock, VirtualClock):
            self.clock.remove_listener(self._wake_coordinator)
