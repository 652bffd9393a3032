"""The one source of time: every timer in streamcore reads a clock object.

``SystemClock`` is wall time. ``VirtualClock`` is time that moves only when
told: an App on a virtual clock jumps straight to its next timer whenever
nothing is running, so hours of retries and windows replay in milliseconds,
deterministically (SEMANTICS 0.7). No other module calls ``time.time`` or
``time.sleep``.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable


class Clock:
    """What every clock offers: ``now``, ``sleep`` and a random source for jitter."""

    virtual: bool = False

    def now(self) -> float:
        """Epoch seconds."""
        raise NotImplementedError

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds`` of this clock's time."""
        raise NotImplementedError

    def random(self) -> float:
        """A float in [0, 1) for retry jitter."""
        raise NotImplementedError


class SystemClock(Clock):
    """Wall-clock time (``time.time``), real sleeps."""

    def __init__(self) -> None:
        self._rng = random.Random()

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def random(self) -> float:
        return self._rng.random()

    def __repr__(self) -> str:
        return "SystemClock()"


class VirtualClock(Clock):
    """Time that advances only through ``advance`` (or an idle App jumping to its next timer).

    Parameters
    ----------
    start : float
        Epoch seconds the clock starts at.
    seed : int
        Seed of the random source used for retry jitter, so runs repeat exactly.

    A thread that calls ``sleep`` blocks until the clock reaches its deadline
    and counts as idle meanwhile, so an App may move time on. Thread-safe.
    """

    virtual = True

    def __init__(self, start: float = 1_700_000_000.0, seed: int = 0) -> None:
        self._now = float(start)
        self._rng = random.Random(seed)
        self._cond = threading.Condition()
        self._sleeping: dict[int, float] = {}  # thread ident -> sleep deadline
        self._listeners: list[Callable[[], None]] = []

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (>= 0) and wake the sleepers it releases."""
        if seconds < 0:
            raise ValueError(f"seconds={seconds!r} is invalid: expected >= 0")
        self.advance_to(self._now + seconds)

    def advance_to(self, when: float) -> None:
        """Move time forward to ``when`` (never backwards)."""
        with self._cond:
            if when > self._now:
                self._now = when
                self._cond.notify_all()

    def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        me = threading.get_ident()
        with self._cond:
            deadline = self._now + seconds
            self._sleeping[me] = deadline
        self._notify_listeners()
        with self._cond:
            try:
                while self._now < deadline:
                    self._cond.wait()
            finally:
                del self._sleeping[me]

    def sleeping_threads(self) -> set[int]:
        """Idents of the threads blocked in ``sleep`` right now."""
        with self._cond:
            return {t for t, d in self._sleeping.items() if d > self._now}

    def sleepers(self) -> int:
        """How many threads are blocked in ``sleep`` right now."""
        return len(self.sleeping_threads())

    def next_wakeup(self) -> float | None:
        """The earliest deadline of a sleeping thread, if any."""
        with self._cond:
            pending = [d for d in self._sleeping.values() if d > self._now]
            return min(pending) if pending else None

    def random(self) -> float:
        return self._rng.random()

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever a thread starts sleeping (an App re-checks idleness)."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def _notify_listeners(self) -> None:
        for callback in list(self._listeners):
            callback()

    def __repr__(self) -> str:
        return f"VirtualClock(now={self._now!r})"


SYSTEM_CLOCK = SystemClock()
