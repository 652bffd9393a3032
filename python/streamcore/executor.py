"""Executors run handler invocations; the default is a pool of worker threads.

Workers pull work from the App's scheduler themselves (no central hand-off),
so a worker that finishes a batch goes straight on to the next ready one. The
pool grows on demand up to the App's ``concurrency``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class ThreadExecutor:
    """A growable pool of daemon threads, each running ``loop(worker_id)`` until it returns."""

    def __init__(self, loop: Callable[[int], None], *, name: str = "streamcore") -> None:
        self._loop: Callable[[int], None] | None = loop
        self._name = name
        self._threads: list[threading.Thread] = []

    @property
    def size(self) -> int:
        return sum(1 for t in self._threads if t.is_alive())

    def ensure(self, n: int) -> None:
        """Have at least ``n`` live workers."""
        self._threads = [t for t in self._threads if t.is_alive()]
        if self._loop is None:
            raise RuntimeError("the executor is closed")
        while len(self._threads) < n:
            worker_id = len(self._threads)
            thread = threading.Thread(
                target=self._loop, args=(worker_id,), name=f"{self._name}-{worker_id}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the workers to return (after the scheduler told them to stop)."""
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)
        self._threads = [t for t in self._threads if t.is_alive()]

    def close(self) -> None:
        """No more workers: drop ``loop``.

        ``loop`` is usually a bound method of the object that owns this
        executor: a reference cycle, which would keep everything that object
        holds (a consumer's dispatchers, its window states) alive until the
        garbage collector's next full pass.
        """
        self._loop = None
