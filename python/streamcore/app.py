"""``App``: consumers, their checkpoints, and the loop that runs them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from streamcore.batch import Batch
from streamcore.checkpoints import CheckpointStore, MemoryCheckpoints
from streamcore.clock import SYSTEM_CLOCK, Clock
from streamcore.consumer import StreamConsumer
from streamcore.errors import AppStateError, ConfigError
from streamcore.options import (
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_STATE_BYTES,
    DEFAULT_RETRY_BACKOFF,
    stream_options,
)
from streamcore.queue_consumer import QueueConsumer, queue_options
from streamcore.scheduler import Scheduler
from streamcore.sources.localqueue import LocalQueue
from streamcore.sources.memory import MemoryStream
from streamcore.sources.queue import MemoryQueue

Handler = Callable[[Batch], Any]


class App:
    """A set of consumers run together, with one clock and one checkpoint store.

    Parameters
    ----------
    checkpoints : None or MemoryCheckpoints
        Where consumers keep their per-shard progress. None keeps it in memory
        for this App only; a ``MemoryCheckpoints`` object can be shared by
        several Apps, so a new App resumes where an old one stopped.
    clock : Clock, optional
        ``sc.VirtualClock()`` for deterministic time; the system clock otherwise.
    concurrency : int
        Most handler invocations at once across the App (1..10000).
    """

    def __init__(
        self,
        checkpoints: CheckpointStore | None = None,
        *,
        clock: Clock | None = None,
        concurrency: int = 64,
    ) -> None:
        valid = isinstance(concurrency, int) and not isinstance(concurrency, bool)
        if not valid or not 1 <= concurrency <= 10_000:
            raise ConfigError("concurrency", concurrency, "an integer in 1..10000")
        if checkpoints is None:
            checkpoints = MemoryCheckpoints()
        elif not isinstance(checkpoints, CheckpointStore):
            from streamcore.durable import open_store  # a directory path, or ConfigError

            checkpoints = open_store(checkpoints)
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.concurrency = concurrency
        self._store = checkpoints
        self._scheduler = Scheduler(self.clock, concurrency)
        self._consumers: dict[str, StreamConsumer | QueueConsumer] = {}
        self._runner: threading.Thread | None = None
        self._runner_error: BaseException | None = None
        self._closed = False

    # -- consumers -------------------------------------------------------------

    def consumer(
        self,
        source: MemoryStream | MemoryQueue | LocalQueue,
        *,
        name: str | None = None,
        batch_size: int | None = None,
        batch_window: float = 0.0,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        parallelization: int = 1,
        starting_position: str = "TRIM_HORIZON",
        starting_timestamp: datetime | float | None = None,
        starting_sequence: dict[int, int] | None = None,
        bisect_on_error: bool = False,
        max_retries: int = -1,
        max_record_age: float = -1,
        on_failure: Any = None,
        report_failures: bool = False,
        tumbling_window: float | None = None,
        max_concurrency: int | None = None,
        timeout: float | None = None,
        retry_backoff: tuple[float, float, float] = DEFAULT_RETRY_BACKOFF,
        max_state_bytes: int = DEFAULT_MAX_STATE_BYTES,
    ) -> Callable[[Handler], Handler]:
        """Attach a handler to ``source``; use as a decorator.

        Options (defaults and ranges as AWS Lambda event source mappings):

        - ``batch_size``: most records per batch, 1..10000 (default 100).
        - ``batch_window``: seconds 0..300 a lane waits to fill a batch.
        - ``max_batch_bytes``: most record bytes per batch (a larger single record goes alone).
        - ``parallelization``: 1..10 lanes per shard; records of one key share a lane,
          so per-key order holds; each lane has at most one batch in flight.
        - ``starting_position``: TRIM_HORIZON | LATEST | AT_TIMESTAMP | AT_SEQUENCE, used
          when the checkpoint store has nothing for this consumer.
        - ``max_retries`` (-1 or 0..10000), ``max_record_age`` (-1 or 60..604800 s),
          ``bisect_on_error``, ``on_failure``, ``report_failures``, ``timeout``,
          ``retry_backoff=(initial, multiplier, cap)``: the failure policy.
        - ``tumbling_window``: seconds 1..900: batches never span two epoch-aligned
          windows; ``batch.window``/``batch.state`` carry the window and its state,
          and a closing invocation (``batch.is_final``, no records) ends each window.
          ``max_state_bytes`` (default 1 MiB) bounds the state: past it the window
          is closed early (``batch.terminated_early``) and goes on with fresh state.

        A handler returns None on success and raises on failure; a failed batch
        is retried with back-off while its lane waits (other lanes and shards go on).

        On a ``MemoryQueue`` or ``LocalQueue`` (SEMANTICS 3): ``batch_size`` 1..10000
        (default 10, FIFO at most 10), ``batch_window`` (FIFO: 0), ``max_batch_bytes``,
        ``max_concurrency`` (None or 2..1000), ``report_failures`` and ``timeout``; a
        handled batch is deleted, a failed one comes back after the visibility timeout
        and the queue's ``dead_letter`` takes messages past ``max_receive_count``.
        """
        if isinstance(source, (MemoryQueue, LocalQueue)):
            stream_defaults: dict[str, tuple[Any, Any]] = {
                "parallelization": (parallelization, 1),
                "starting_position": (starting_position, "TRIM_HORIZON"),
                "starting_timestamp": (starting_timestamp, None),
                "starting_sequence": (starting_sequence, None),
                "bisect_on_error": (bisect_on_error, False),
                "max_retries": (max_retries, -1),
                "max_record_age": (max_record_age, -1),
                "tumbling_window": (tumbling_window, None),
                "retry_backoff": (retry_backoff, DEFAULT_RETRY_BACKOFF),
                "max_state_bytes": (max_state_bytes, DEFAULT_MAX_STATE_BYTES),
            }
            queue_opts = queue_options(
                fifo=source.fifo,
                batch_size=batch_size,
                batch_window=batch_window,
                max_batch_bytes=max_batch_bytes,
                max_concurrency=max_concurrency,
                report_failures=report_failures,
                timeout=timeout,
                on_failure=on_failure,
                **{k: v for k, (v, default) in stream_defaults.items() if v != default},
            )
            queue = source
            return self._registrar(
                source,
                name,
                lambda n, h: QueueConsumer(n, h, queue, queue_opts, self.clock, self._scheduler),
            )
        if not isinstance(source, MemoryStream):
            raise ConfigError("source", source, "a MemoryStream, MemoryQueue or LocalQueue")
        options = stream_options(
            batch_size=batch_size,
            batch_window=batch_window,
            max_batch_bytes=max_batch_bytes,
            parallelization=parallelization,
            starting_position=starting_position,
            starting_timestamp=starting_timestamp,
            starting_sequence=starting_sequence,
            bisect_on_error=bisect_on_error,
            max_retries=max_retries,
            max_record_age=max_record_age,
            on_failure=on_failure,
            report_failures=report_failures,
            tumbling_window=tumbling_window,
            timeout=timeout,
            retry_backoff=retry_backoff,
            max_state_bytes=max_state_bytes,
        )
        if max_concurrency is not None:
            raise ConfigError("max_concurrency", max_concurrency, "None for stream consumers (queues only)")

        stream = source
        return self._registrar(
            source,
            name,
            lambda n, h: StreamConsumer(n, h, stream, options, self._store, self.clock),
        )

    def _registrar(
        self,
        source: Any,
        name: str | None,
        make: Callable[[str, Handler], StreamConsumer | QueueConsumer],
    ) -> Callable[[Handler], Handler]:
        """The decorator that checks the handler and its name, then attaches the consumer."""

        def register(handler: Handler) -> Handler:
            if not callable(handler):
                raise ConfigError("handler", handler, "a callable taking a Batch")
            consumer_name = name if name is not None else getattr(handler, "__name__", None)
            if not isinstance(consumer_name, str) or not consumer_name:
                raise ConfigError("name", consumer_name, "a non-empty string")
            if consumer_name in self._consumers:
                raise ConfigError("name", consumer_name, "a name not used by another consumer of this App")
            if self._closed:
                raise AppStateError("the App is closed")
            source._attach(self.clock, self._scheduler.on_put)
            consumer = make(consumer_name, handler)
            self._consumers[consumer_name] = consumer
            self._scheduler.add_consumer(consumer)
            return handler

        return register

    # -- running ---------------------------------------------------------------

    def run(self, until_idle: bool = False, timeout: float | None = None) -> None:
        """Run the consumers in this thread.

        ``until_idle=True`` returns once no work is left and no timer could
        create any; ``timeout`` (seconds of the App's clock) bounds the run;
        otherwise it runs until ``stop()`` is called from another thread. On a
        ``VirtualClock`` time jumps to each next timer, so waiting costs nothing.
        """
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
            raise ConfigError("timeout", timeout, "None or seconds >= 0")
        if self._closed:
            raise AppStateError("the App is closed")
        self._scheduler.run(until_idle=until_idle, timeout=timeout)

    def start(self) -> None:
        """Run the consumers in a background thread until ``stop()``."""
        if self._closed:
            raise AppStateError("the App is closed")
        if self._runner is not None and self._runner.is_alive():
            raise AppStateError("the App is already running")
        self._runner_error = None

        def target() -> None:
            try:
                self._scheduler.run(until_idle=False, timeout=None)
            except BaseException as exc:  # surfaced by stop()
                self._runner_error = exc

        self._runner = threading.Thread(target=target, name="streamcore-app", daemon=True)
        self._runner.start()

    def stop(self, drain: bool = True) -> None:
        """Stop running.

        ``drain=True`` lets batches in flight finish and records their
        checkpoints; ``drain=False`` returns at once and abandons them (they are
        delivered again later: at-least-once).
        """
        self._scheduler.request_stop(drain)
        runner = self._runner
        if runner is not None and runner is not threading.current_thread():
            runner.join()
            self._runner = None
        elif runner is None:
            self._scheduler.wait_stopped()
        if self._runner_error is not None:
            error, self._runner_error = self._runner_error, None
            raise error

    def close(self) -> None:
        """Stop (draining), detach from the sources and end the worker threads."""
        if self._closed:
            return
        if self._scheduler.running:
            self.stop(drain=True)
        self._closed = True
        for consumer in self._consumers.values():
            consumer.stream._detach(self._scheduler.on_put)
        self._scheduler.shutdown()
        self._store.close()

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- observing -------------------------------------------------------------

    def checkpoints(self) -> dict[str, dict[int, int | None]]:
        """``{consumer: {shard: seq}}``: the last seq of each shard with everything up to it done."""
        with self._scheduler.lock:
            return {name: c.checkpoints() for name, c in self._consumers.items()}

    def metrics(self) -> dict[str, int | float]:
        """Counters and gauges, summed over consumers and per consumer as ``"<name>.<key>"``."""
        out: dict[str, int | float] = {}
        with self._scheduler.lock:
            per_consumer = {name: c.metrics() for name, c in self._consumers.items()}
        for name, values in per_consumer.items():
            for key, value in values.items():
                out[f"{name}.{key}"] = value
                if key in ("iterator_age_ms", "age_of_oldest_ms"):
                    out[key] = max(out.get(key, 0), value)
                else:
                    out[key] = out.get(key, 0) + value
        return out

    def __repr__(self) -> str:
        return f"App(consumers={sorted(self._consumers)}, clock={self.clock!r})"

