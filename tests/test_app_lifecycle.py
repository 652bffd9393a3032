"""Running in the background, stopping with and without drain, resuming (API.md "Consumers")."""

from __future__ import annotations

import threading
import time

import pytest

import streamcore as sc


def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def test_start_consumes_puts_in_the_background_and_stop_drains() -> None:
    stream = sc.MemoryStream(shards=2)
    seen: list[int] = []
    lock = threading.Lock()
    with sc.App() as app:

        @app.consumer(stream, batch_size=10)
        def handle(batch: sc.Batch) -> None:
            with lock:
                seen.extend(batch.records["n"].to_pylist())

        app.start()
        for i in range(5):
            stream.put([{"key": f"k{j}", "n": 10 * i + j} for j in range(10)])
        wait_for(lambda: len(seen) == 50)
        app.stop(drain=True)
        assert sorted(seen) == list(range(50))
        assert app.metrics()["records_done"] == 50
        with pytest.raises(sc.AppStateError):
            app.start()
            app.start()
        app.stop()


def test_stop_without_drain_abandons_in_flight_batches_for_redelivery() -> None:
    stream = sc.MemoryStream(shards=1)
    stream.put([{"key": "k", "n": i} for i in range(3)])
    started = threading.Event()
    release = threading.Event()
    attempts: list[int] = []
    store = sc.MemoryCheckpoints()
    app = sc.App(store)

    @app.consumer(stream, batch_size=10)
    def slow(batch: sc.Batch) -> None:
        attempts.append(batch.attempt)
        started.set()
        release.wait(5)

    app.start()
    assert started.wait(5)
    app.stop(drain=False)  # returns although the handler still runs
    assert app.checkpoints()["slow"][0] is None
    release.set()
    app.close()

    again: list[list[int]] = []
    app2 = sc.App(store)

    @app2.consumer(stream, name="slow", batch_size=10)
    def resumed(batch: sc.Batch) -> None:
        again.append(batch.records["n"].to_pylist())

    app2.run(until_idle=True, timeout=10)
    assert again == [[0, 1, 2]]  # at-least-once: delivered again
    assert app2.checkpoints()["slow"][0] == 2


def test_run_twice_resumes_and_consumes_records_put_in_between() -> None:
    clock = sc.VirtualClock()
    stream = sc.MemoryStream(shards=3, clock=clock)
    app = sc.App(clock=clock)
    seen: list[int] = []

    @app.consumer(stream)
    def handle(batch: sc.Batch) -> None:
        seen.extend(batch.records["n"].to_pylist())

    stream.put([{"key": f"k{i}", "n": i} for i in range(10)])
    app.run(until_idle=True)
    stream.put([{"key": f"k{i}", "n": i} for i in range(10, 20)])
    app.run(until_idle=True)
    assert sorted(seen) == list(range(20))


def test_run_with_timeout_on_the_virtual_clock_returns() -> None:
    clock = sc.VirtualClock()
    stream = sc.MemoryStream(shards=1, clock=clock)
    app = sc.App(clock=clock)

    @app.consumer(stream)
    def handle(batch: sc.Batch) -> None:
        raise RuntimeError("never succeeds")

    stream.put([{"key": "k", "n": 1}])
    before = clock.now()
    app.run(timeout=3600)
    assert clock.now() - before == pytest.approx(3600)
    assert app.metrics()["retries"] > 10


def test_batch_window_waits_for_a_fuller_batch() -> None:
    clock = sc.VirtualClock()
    stream = sc.MemoryStream(shards=1, clock=clock)
    app = sc.App(clock=clock)
    batches: list[tuple[float, list[int]]] = []

    @app.consumer(stream, batch_size=100, batch_window=5)
    def handle(batch: sc.Batch) -> None:
        batches.append((clock.now(), batch.records["n"].to_pylist()))

    t0 = clock.now()
    stream.put([{"key": "k", "n": 1}])
    app.run(timeout=2)
    assert batches == []  # still gathering
    stream.put([{"key": "k", "n": 2}])
    app.run(until_idle=True)
    assert batches == [(t0 + 5, [1, 2])]


def test_stream_without_clock_takes_the_apps_and_close_detaches() -> None:
    clock = sc.VirtualClock(start=1_000_000.0)
    stream = sc.MemoryStream(shards=1)
    app = sc.App(clock=clock)
    arrivals: list[float] = []

    @app.consumer(stream)
    def handle(batch: sc.Batch) -> None:
        arrivals.extend(a.timestamp() for a in batch.records["arrival"].to_pylist())

    stream.put([{"key": "k", "n": 1}])
    app.run(until_idle=True)
    assert arrivals == [1_000_000.0]
    app.close()
    with pytest.raises(sc.AppStateError):
        app.run(until_idle=True)


def test_records_past_retention_are_dropped_not_stuck() -> None:
    clock = sc.VirtualClock()
    stream = sc.MemoryStream(shards=1, retention=100, clock=clock)
    stream.put([{"key": "k", "n": i} for i in range(5)])
    app = sc.App(clock=clock)
    seen: list[int] = []

    @app.consumer(stream, batch_size=2)
    def handle(batch: sc.Batch) -> None:
        if 1 in batch.records["n"].to_pylist() and clock.now() - 1_700_000_000 < 150:
            raise RuntimeError("fails until the records expire")
        seen.extend(batch.records["n"].to_pylist())

    app.run(timeout=90)
    assert seen == []
    clock.advance(20)
    stream.put([{"key": "k", "n": 5}])  # expires the first put's records (retention 100 s)
    app.run(until_idle=True)
    assert seen == [5]
    assert app.metrics()["records_expired"] == 5
    assert app.checkpoints()["handle"][0] == 5


def test_a_drain_asked_for_after_a_stop_without_drain_does_not_undo_it() -> None:
    # A handler's stop(drain=False) waits for the stop; a drain asked for meanwhile by
    # another thread used to turn it into a drain, which waits for that very handler.
    # The race is too narrow to hit reliably through the App, so the scheduler is asked directly.
    app = sc.App()
    scheduler = app._scheduler
    with scheduler.lock:
        scheduler.running = True  # as during run(), without the threads
    scheduler.request_stop(False)
    scheduler.request_stop(True)
    assert scheduler._drain is False
    with scheduler.lock:
        scheduler.running = False
    app.close()


def test_a_closed_app_is_freed_without_the_garbage_collector() -> None:
    """Closing breaks the App's reference cycles (its executor's loop is a bound method
    of its scheduler), so its consumers' dispatchers and window states go at once,
    not at the collector's next full pass (seen as page faults of the next App)."""
    import gc
    import weakref

    clock = sc.VirtualClock(start=0.0)
    stream = sc.MemoryStream(shards=2, clock=clock)
    stream.put([{"key": f"k{i}", "n": i} for i in range(50)], key="key")
    gc.collect()
    gc.disable()
    try:
        with sc.App(clock=clock) as app:

            @app.consumer(stream, batch_size=10, tumbling_window=60)
            def handle(batch: sc.Batch) -> None:
                assert batch.state is not None
                batch.state["seen"] = batch.state.get("seen", 0) + len(batch)

            app.run(until_idle=True)
            scheduler = weakref.ref(app._scheduler)
            consumer = weakref.ref(app._scheduler.consumers[0])
        del app, handle
        assert scheduler() is None
        assert consumer() is None
    finally:
        gc.enable()


def test_a_closed_app_cannot_be_started_again() -> None:
    app = sc.App()
    app.close()
    with pytest.raises(sc.AppStateError, match="closed"):
        app.start()
    with pytest.raises(sc.AppStateError, match="closed"):
        app.run(until_idle=True)
    app.stop()  # nothing runs: returns at once


def test_iterator_age_is_the_age_of_the_last_finished_batch_when_it_finished() -> None:
    # SEMANTICS: IteratorAge is the age of the last record of the last batch, at the
    # time the invocation finished.
    clock = sc.VirtualClock(start=1000.0)
    stream = sc.MemoryStream(shards=1, clock=clock)
    stream.put([{"key": "k", "n": i} for i in range(3)])  # arrive at t=1000
    clock.advance(2.5)
    with sc.App(clock=clock) as app:

        @app.consumer(stream, name="c", batch_size=10)
        def handle(batch: sc.Batch) -> None:
            clock.advance(0.25)  # the invocation takes 250 ms of clock time

        assert app.metrics()["iterator_age_ms"] == 0  # nothing finished yet
        app.run(until_idle=True)
        metrics = app.metrics()
        assert metrics["iterator_age_ms"] == 2750
        assert metrics["c.iterator_age_ms"] == 2750
        clock.advance(10.0)  # a gauge of the last batch, not of the time since
        assert app.metrics()["iterator_age_ms"] == 2750
        stream.put([{"key": "k", "n": 3}])  # arrives at t=1012.75
        app.run(until_idle=True)
        assert app.metrics()["iterator_age_ms"] == 250
