"""Queue consumers (SEMANTICS 3): options, the AWS-verified scenarios, poller scaling, properties.

Everything runs on ``sc.VirtualClock`` through the public API. Handlers that
take time call ``clock.sleep``, so time only moves when every running handler
sleeps, and runs repeat exactly.
"""

from __future__ import annotations

import json
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streamcore as sc
from streamcore.queue_consumer import queue_options


def bodies(batch: sc.Batch) -> list[bytes]:
    return batch.records.column("body").to_pylist()  # type: ignore[no-any-return]


def ids(batch: sc.Batch) -> list[str]:
    return batch.records.column("message_id").to_pylist()  # type: ignore[no-any-return]


def totals(app: sc.App) -> dict[str, Any]:
    return {k: v for k, v in app.metrics().items() if "." not in k}


class Live:
    """Counts handler invocations running at once (and which messages they hold)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.held: set[str] = set()
        self.overlaps = 0  # invocations that got a message another one still held

    def enter(self, message_ids: list[str]) -> None:
        with self.lock:
            if self.held & set(message_ids):  # checked by the test after the run
                self.overlaps += 1
            self.held |= set(message_ids)
            self.now += 1
            self.peak = max(self.peak, self.now)

    def leave(self, message_ids: list[str]) -> None:
        with self.lock:
            self.held -= set(message_ids)
            self.now -= 1


# --------------------------------------------------------------------------
# options


def queue_and_app() -> tuple[sc.MemoryQueue, sc.App]:
    clock = sc.VirtualClock()
    return sc.MemoryQueue(clock=clock), sc.App(clock=clock)


@pytest.mark.parametrize(
    ("option", "value", "fifo"),
    [
        ("batch_size", 0, False),
        ("batch_size", 10_001, False),
        ("batch_size", 11, True),
        ("batch_size", 2.5, False),
        ("batch_size", True, False),
        ("batch_window", -1, False),
        ("batch_window", 300.5, False),
        ("batch_window", 1, True),
        ("batch_window", "1", False),
        ("max_concurrency", 1, False),
        ("max_concurrency", 1001, False),
        ("max_concurrency", 5.0, False),
        ("timeout", 0, False),
        ("timeout", -2, False),
        ("timeout", float("inf"), False),
        ("report_failures", 1, False),
        ("max_batch_bytes", 0, False),
    ],
)
def test_options_out_of_range(option: str, value: Any, fifo: bool) -> None:
    clock = sc.VirtualClock()
    queue = sc.MemoryQueue(clock=clock, fifo=fifo)
    with sc.App(clock=clock) as app, pytest.raises(sc.ConfigError, match=option) as info:
        app.consumer(queue, **{option: value})
    assert info.value.option == option


def test_fifo_limits_and_defaults() -> None:
    assert queue_options().batch_size == 10
    assert queue_options(fifo=True, batch_size=10).batch_size == 10
    assert queue_options(batch_size=10_000).batch_size == 10_000
    assert queue_options(max_concurrency=2).max_concurrency == 2


def test_on_failure_is_not_for_queues() -> None:
    queue, app = queue_and_app()
    with app, pytest.raises(sc.ConfigError, match="on_failure") as info:
        app.consumer(queue, on_failure=print)
    assert "dead_letter" in str(info.value)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("bisect_on_error", True),
        ("max_retries", 3),
        ("max_record_age", 60),
        ("parallelization", 2),
        ("tumbling_window", 60),
        ("starting_position", "LATEST"),
        ("retry_backoff", (1.0, 2.0, 10.0)),
        ("max_state_bytes", 1000),
    ],
)
def test_stream_only_options_are_rejected(option: str, value: Any) -> None:
    queue, app = queue_and_app()
    with app, pytest.raises(sc.ConfigError, match=option) as info:
        app.consumer(queue, **{option: value})
    assert info.value.option == option
    with pytest.raises(sc.ConfigError, match=option):
        queue_options(**{option: value})


def test_queue_options_rejects_unknown_names() -> None:
    with pytest.raises(TypeError, match="shards"):
        queue_options(shards=3)


def test_registration_rules() -> None:
    queue, app = queue_and_app()
    with app:
        app.consumer(queue, name="a")(lambda batch: None)
        with pytest.raises(sc.ConfigError, match="name"):
            app.consumer(queue, name="a")(lambda batch: None)
        with pytest.raises(sc.ConfigError, match="handler"):
            app.consumer(queue, name="b")(42)  # type: ignore[arg-type]
        with pytest.raises(sc.ConfigError, match="source"):
            app.consumer(object())  # type: ignore[arg-type]
        assert app.checkpoints() == {"a": {}}


# --------------------------------------------------------------------------
# SEMANTICS 3.1: reading, batching, deleting


def test_success_deletes_the_batch() -> None:
    clock = sc.VirtualClock()
    queue = sc.MemoryQueue(clock=clock)
    sent = queue.send([b"a", b"b", b"c"])
    seen: list[sc.Batch] = []
    with sc.App(clock=clock) as app:
        app.consumer(queue, name="h")(seen.append)
        app.run(until_idle=True)
        assert len(seen) == 1
        batch = seen[0]
        assert ids(batch) == sent
        assert (batch.source, batch.shard, batch.lane, batch.attempt) == ("queue", 0, 0, 1)
        assert (batch.first_seq, batch.last_seq) == (0, 2)
        assert batch.records.schema.names == ["message_id", "body", "receive_count", "sent"]
        assert queue.counts() == {"visible": 0, "in_flight": 0, "delayed": 0}
        m = totals(app)
        assert (m["records_in"], m["records_done"], m["messages_deleted"], m["invocations"]) == (3, 3, 3, 1)
        for key in ("errors", "retries", "throttles", "dead_lettered", "visible", "in_flight"):
            assert m[key] == 0, key
        assert m["concurrency"] == 5
        assert "age_of_oldest_ms" in m and "iterator_age_ms" in m


def test_batch_size_splits_a_backlog() -> None:
    clock = sc.VirtualClock()
    queue = sc.MemoryQueue(clock=clock)
    queue.send([b"%d" % i for i in range(25)])
    sizes: list[int] = []
    with sc.App(clock=clock) as app:
        app.consumer(queue, name="h", batch_size=10)(lambda b: sizes.append(len(b)))
        app.run(until_idle=True)
    assert sorted(sizes) == [5, 10, 10]


def test_batch_window_waits_for_a_fuller_batch() -> None:
    clock = sc.VirtualClock()
    start = clock.now()
    queue = sc.MemoryQueue(clock=clock)
    calls: list[tuple[float, int]] = []
    with sc.App(clock=clock) as app:
        app.consumer(queue, name="h", batch_size=100, batch_window=10)(
            lambda b: calls.append((clock.now() - start, len(b)))
        )
        queue.send([b"a", b"b", b"c"])
        app.run(until_idle=True)
        assert calls == [(10.0, 3)]
        queue.send([b"x"] * 100)  # a full batch goes at once
        app.run(until_idle=True)
        assert calls[-1] == (10.0, 100)


def test_max_batch_bytes_cuts_batches() -> None:
    clock = sc.VirtualClock()
    queue = sc.MemoryQueue(clock=clock)
    queue.send([b"x" * 100] * 10)  # 104 bytes each (4-byte offset + 100)
    sizes: list[int] = []
    with sc.App(clock=clock) as app:
        app.consumer(queue, name="h", batch_size=10, max_batch_bytes=350)(lambda b: sizes.append(len(b)))
        app.run(until_idle=True)
    assert sizes == [3, 3, 3, 1]


# --------------------------------------------------------------------------
# SEMANTICS 3.2: visibility timeout, receive count, redrive


def test_max_receive_count_2_with_an_always_failing_handler() -> None:
    clock = sc.VirtualClock()
    dead = sc.MemoryQueue(name="dlq", clock=clock)
    queue = sc.MemoryQueue(clock=clock, visibility_timeout=30, max_receive_count=2, dead_letter=dead)
    queue.send([b"poison"])
    counts: list[int] = []

    with sc.App(clock=clock) as app:

        @app.consumer(queue)
        def handle(batch: sc.Batch) -> None:
            counts.append(batch.records.column("receive_count")[0].as_py())
            assert dead.counts()["visible"] == 0  # not in the DLQ before the last attempt
            raise RuntimeError("always")

        app.run(until_idle=True)
        assert counts == [1, 2]
        assert bodies_of(dead.receive(10)) == [b"poison"]
        assert len(queue) == 0
        m = totals(app)
        assert (m["invocations"], m["errors"], m["dead_lettered"], m["retries"]) == (2, 2, 1, 1)


def bodies_of(records: Any) -> list[bytes]:
    return records.column("body").to_pylist()  # type: ignore[no-any-return]


def test_a_retry_comes_no_earlier_than_the_visibility_timeout() -> None:
    clock = sc.VirtualClock()
    queue = sc.MemoryQueue(clock=clock, visibility_timeout=5)
    queue.send([b"m"])
    times: list[float] = []

    with sc.App(clock=clock) as app:

        @app.consumer(queue)
        def handle(batch: sc.Batch) -> None:
            times.append(clock.now())
            if len(times) == 1:
                raise ValueError("first attempt fails")

        app.run(until_idle=True)
    assert len(times) == 2
    assert times[1] - times[0] >= 5
    assert len(queue) == 0


def test_effective_visibility_timeout_covers_window_and_timeout() -> None:
    # SEMANTICS 0.8: batch_window + timeout > visibility_timeout -> window + timeout + 30 s.
    clock = sc.VirtualClock()
    queue = sc.MemoryQueue(clock=clock, visibility_timeout=5)
    queue.send([b"m"])
    times: list[float] = []

    with sc.App(clock=clock) as app:

        @app.consumer(queue, timeout=10, batch_window=2)
        def handle(batch: sc.Batch) -> None:
            times.append(clock.now())
            if len(times) == 1:
                raise ValueError("fail")

        app.run(until_idle=True)
    # invisible for 2 + 10 + 30 s from the receive, then the 2 s window again
    assert times[1] - times[0] == pytest.approx(2 + 10 + 30 + 2)


def test_a_timed_out_invocation_fails_and_its_messages_come_back() -> None:
    clock = sc.VirtualClock()
    queue = sc.MemoryQueue(clock=clock, visibility_timeout=30)
    queue.send([b"slow"])
    starts: list[float] = []
    with sc.App(clock=clock) as app:

        @app.consumer(queue, timeout=5)
        def handle(batch: sc.Batch) -> None:
            starts.append(clock.now())
            if len(starts) == 1:
                clock.sleep(20)  # past its timeout: the result is ignored

        app.run(until_idle=True)
        m = totals(app)
    assert len(starts) == 2 and starts[1] - starts[0] >= 30
    assert (m["errors"], m["records_done"]) == (1, 1)
    assert len(queue) == 0


# --------------------------------------------------------------------------
# SEMANTICS 3.3: partial batch responses


def test_fifo_partial_failure_sequence() -> None:
    # 4 messages in one group; 2, 3, 4 reported failed; max_receive_count 2.
    clock = sc.VirtualClock()
    dead = sc.MemoryQueue(name="dlq.fifo", fifo=True, clock=clock)
    queue = sc.MemoryQueue(
        name="q.fifo", fifo=True, clock=clock, max_receive_count=2, dead_letter=dead, content_based_dedup=True
    )
    sent = queue.send([b"1", b"2", b"3", b"4"], group_id="g")
    calls: list[list[tuple[bytes, int]]] = []

    with sc.App(clock=clock) as app:

        @app.consumer(queue, report_failures=True)
        def handle(batch: sc.Batch) -> Any:
            rows = batch.records.to_pylist()
            calls.append([(r["body"], r["receive_count"]) for r in rows])
            if len(calls) == 1:
                return sc.BatchFailures(sent[1:])
            return {"batchItemFailures": [{"itemIdentifier": sent[3]}]}

        app.run(until_idle=True)
        assert calls == [[(b"1", 1), (b"2", 1), (b"3", 1), (b"4", 1)], [(b"2", 2), (b"3", 2), (b"4", 2)]]
        moved = dead.receive(10)
        assert bodies_of(moved) == [b"4"]
        assert moved.column("group_id").to_pylist() == ["g"]
        assert len(queue) == 0
        m = totals(app)
        assert (m["invocations"], m["records_done"], m["dead_lettered"], m["errors"]) == (2, 3, 1, 0)


def test_standard_partial_failure_only_listed_messages_come_back() -> None:
    clock = sc.VirtualClock()
    queue = sc.MemoryQueue(clock=clock, visibility_timeout=10)
    sent = queue.send([b"a", b"b", b"c", b"d"])
    calls: list[list[bytes]] = []

    with sc.App(clock=clock) as app:

        @app.consumer(queue, report_failures=True)
        def handle(batch: sc.Batch) -> Any:
            calls.append(bodies(batch))
            if len(calls) == 1:
                return sc.BatchFailures([sent[1], sent[3], sent[1]])
            return None

        app.run(until_idle=True)
        assert calls == [[b"a", b"b", b"c", b"d"], [b"b", b"d"]]
        assert totals(app)["messages_deleted"] == 4


SUCCESSES = [None, "", [], {}, sc.BatchFailures(), {"batchItemFailures": None}, {"batchItemFailures": []}]


@pytest.mark.parametrize("response", SUCCESSES, ids=repr)
def test_partial_response_success_forms(response: Any) -> None:
    clock = sc.VirtualClock()
    queue = sc.MemoryQueue(clock=clock)
    queue.send([b"a", b"b"])
    with sc.App(clock=clock) as app:
        app.consumer(queue, name="h", report_failures=True)(lambda batch: response)
        app.run(until_idle=True)
        m = totals(app)
    assert (m["invocations"], m["errors"], m["messages_deleted"]) == (1, 0, 2)


def invalid_responses(batch_ids: list[str]) -> list[Any]:
    return [
        {"batchItemFailures": [{"itemIdentifier": ""}]},
        {"batchItemFailures": [{"itemIdentifier": None}]},
        {"batchItemFailures": [{"foo": "notvalid"}]},
        {"batchItemFailures": [{"itemIdentifier": "00000000-0000-4000-8000-000000000099"}]},
        {"batchItemFailures": [{"itemIdentifier": batch_ids[0]}, {"itemIdentifier": "nope"}]},
        sc.BatchFailures([12]),
        {"batchItemFailures": "x"},
        {"statusCode": 200},
        "not json",
        42,
        [batch_ids[0]],
    ]


@pytest.mark.parametrize("case", range(11))
def test_invalid_partial_responses_fail_the_whole_batch(case: int) -> None:
    clock = sc.VirtualClock()
    dead = sc.MemoryQueue(name="dlq", clock=clock)
    queue = sc.MemoryQueue(clock=clock, visibility_timeout=5, max_receive_count=2, dead_letter=dead)
    queue.send([b"a", b"b"])
    calls: list[list[int]] = []

    with sc.App(clock=clock) as app:

        @app.consumer(queue, report_failures=True)
        def handle(batch: sc.Batch) -> Any:
            calls.append(batch.records.column("receive_count").to_pylist())
            return invalid_responses(ids(batch))[case]

        app.run(until_idle=True)
        assert calls == [[1, 1], [2, 2]]
        assert sorted(bodies_of(dead.receive(10))) == [b"a", b"b"]
        assert totals(app)["errors"] == 2


def test_an_exception_fails_the_whole_batch_even_with_report_failures() -> None:
    clock = sc.VirtualClock()
    dead = sc.MemoryQueue(name="dlq", clock=clock)
    queue = sc.MemoryQueue(clock=clock, visibility_timeout=5, max_receive_count=2, dead_letter=dead)
    queue.send([b"a", b"b"])
    with sc.App(clock=clock) as app:

        @app.consumer(queue, report_failures=True)
        def handle(batch: sc.Batch) -> Any:
            raise RuntimeError("boom")

        app.run(until_idle=True)
    assert sorted(bodies_of(dead.receive(10))) == [b"a", b"b"]


def test_without_report_failures_a_response_is_ignored() -> None:
    clock = sc.VirtualClock()
    queue = sc.MemoryQueue(clock=clock)
    queue.send([b"a", b"b"])
    with sc.App(clock=clock) as app:
        app.consumer(queue, name="h")(lambda batch: sc.BatchFailures(ids(batch)))
        app.run(until_idle=True)
        assert totals(app)["messages_deleted"] == 2


# --------------------------------------------------------------------------
# SEMANTICS 3.4: FIFO


def test_fifo_one_group_is_processed_serially() -> None:
    # 5 messages in one group, batch_size 1, a handler that takes 5 s: never two at once.
    clock = sc.VirtualClock()
    queue = sc.MemoryQueue(fifo=True, clock=clock, content_based_dedup=True)
    queue.send([b"1", b"2", b"3", b"4", b"5"], group_id="g")
    live = Live()
    order: list[bytes] = []
    with sc.App(clock=clock) as app:

        @app.consumer(queue, batch_size=1)
        def handle(batch: sc.Batch) -> None:
            live.enter(ids(batch))
            order.extend(bodies(batch))
            clock.sleep(5)
            live.leave(ids(batch))

        app.run(until_idle=True)
    assert live.overlaps == 0
    assert live.peak == 1
    assert order == [b"1", b"2", b"3", b"4", b"5"]


def test_fifo_groups_run_concurrently_up_to_the_group_count() -> None:
    clock = sc.VirtualClock()
    queue = sc.MemoryQueue(fifo=True, clock=clock, content_based_dedup=True)
    for g in "abc":
        queue.send([f"{g}{i}".encode() for i in range(4)], group_id=g)
    live = Live()
    per_group: dict[str, list[bytes]] = {}
    with sc.App(clock=clock) as app:

        @app.consumer(queue, batch_size=1)
        def handle(batch: sc.Batch) -> None:
            live.enter(ids(batch))
            group = batch.records.column("group_id")[0].as_py()
            per_group.setdefault(group, []).extend(bodies(batch))
            clock.sleep(5)
            live.leave(ids(batch))

        app.run(until_idle=True)
    assert live.overlaps == 0
    assert live.peak == 3
    assert per_group == {g: [f"{g}{i}".encode() for i in range(4)] for g in "abc"}


def test_fifo_failed_group_holds_its_later_messages() -> None:
    clock = sc.VirtualClock()
    queue = sc.MemoryQueue(fifo=True, clock=clock, visibility_timeout=10, content_based_dedup=True)
    queue.send([b"a1", b"a2"], group_id="a")
    queue.send([b"b1"], group_id="b")
    order: list[bytes] = []
    with sc.App(clock=clock) as app:

        @app.consumer(queue, batch_size=1)
        def handle(batch: sc.Batch) -> None:
            order.extend(bodies(batch))
            if bodies(batch) == [b"a1"] and batch.attempt == 1:
                raise ValueError("a1 fails once")

        app.run(until_idle=True)
    assert order.index(b"a1", 1) < order.index(b"a2")  # a2 only after a1's retry
    assert order.count(b"a1") == 2 and order.count(b"b1") == 1


# --------------------------------------------------------------------------
# SEMANTICS 3.6: poller scaling and concurrency


def test_max_concurrency_is_never_exceeded() -> None:
    clock = sc.VirtualClock()
    queue = sc.MemoryQueue(clock=clock, visibility_timeout=60)
    queue.send([b"%d" % i for i in range(40)])
    live = Live()
    with sc.App(clock=clock) as app:

        @app.consumer(queue, batch_size=1, max_concurrency=2)
        def handle(batch: sc.Batch) -> None:
            live.enter(ids(batch))
            clock.sleep(1)
            live.leave(ids(batch))

        app.run(until_idle=True)
        assert totals(app)["records_done"] == 40
    assert live.overlaps == 0
    assert live.peak == 2


def test_scaling_starts_at_5_and_grows_while_a_backlog_remains() -> None:
    clock = sc.VirtualClock()
    start = clock.now()
    queue = sc.MemoryQueue(clock=clock, visibility_timeout=600)
    queue.send([b"%d" % i for i in range(3000)])
    live = Live()
    samples: list[tuple[float, int]] = []
    with sc.App(clock=clock, concurrency=1000) as app:

        @app.consumer(queue, batch_size=1, max_concurrency=40)
        def handle(batch: sc.Batch) -> None:
            live.enter(ids(batch))
            with live.lock:
                samples.append((clock.now() - start, live.now))
            clock.sleep(2)
            live.leave(ids(batch))

        app.run(until_idle=True)
        m = totals(app)
    assert m["records_done"] == 3000
    assert max(n for t, n in samples if t < 1) == 5  # starts with 5 concurrent batches
    for t, n in samples:  # at most 300 more per minute of clock time
        assert n <= 5 + 5 * t + 1, (t, n)
    assert live.overlaps == 0
    assert live.peak == 40  # grew to max_concurrency, and never past it
    assert m["concurrency"] <= 40


def test_failures_shrink_the_concurrency() -> None:
    clock = sc.VirtualClock()
    start = clock.now()
    queue = sc.MemoryQueue(clock=clock, visibility_timeout=60)
    queue.send([b"%d" % i for i in range(400)])
    gauge: list[int] = []
    with sc.App(clock=clock, concurrency=1000) as app:

        @app.consumer(queue, batch_size=1, name="h", max_concurrency=50)
        def handle(batch: sc.Batch) -> None:
            if clock.now() - start >= 30:
                raise RuntimeError("downstream is down")
            clock.sleep(10)

        app.run(timeout=29)
        gauge.append(int(app.metrics()["concurrency"]))
        app.run(timeout=20)
        gauge.append(int(app.metrics()["concurrency"]))
    assert gauge[0] == 50
    assert gauge[1] < 10


# --------------------------------------------------------------------------
# stopping, destinations


def test_stop_without_drain_makes_the_batch_visible_again() -> None:
    clock = sc.VirtualClock()
    queue = sc.MemoryQueue(clock=clock, visibility_timeout=300)
    queue.send([b"a", b"b"])
    entered = threading.Event()
    release = threading.Event()
    app = sc.App(clock=clock)

    @app.consumer(queue)
    def handle(batch: sc.Batch) -> None:
        entered.set()
        release.wait(10)

    app.start()
    assert entered.wait(10)
    app.stop(drain=False)
    assert queue.counts() == {"visible": 2, "in_flight": 0, "delayed": 0}
    release.set()
    app.close()


@pytest.mark.parametrize("fifo", [False, True])
def test_queue_as_a_stream_consumers_on_failure(fifo: bool) -> None:
    clock = sc.VirtualClock()
    stream = sc.MemoryStream(clock=clock)
    stream.put([{"key": "k", "n": 1}])
    failures = sc.MemoryQueue(name="failures", fifo=fifo, clock=clock)
    with sc.App(clock=clock) as app:

        @app.consumer(stream, max_retries=0, on_failure=failures)
        def handle(batch: sc.Batch) -> None:
            raise RuntimeError("bad record")

        app.run(until_idle=True)
    got = failures.receive(10)
    assert got.num_rows == 1
    doc = json.loads(got.column("body")[0].as_py())
    assert doc["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert doc["KinesisBatchInfo"]["batchSize"] == 1
    if fifo:
        assert got.column("group_id").to_pylist() == ["shardId-000000000000"]


def test_two_consumers_of_one_queue_share_its_messages() -> None:
    clock = sc.VirtualClock()
    queue = sc.MemoryQueue(clock=clock)
    queue.send([b"%d" % i for i in range(100)])
    seen: Counter[bytes] = Counter()
    with sc.App(clock=clock) as app:
        for name in ("one", "two"):
            app.consumer(queue, name=name, batch_size=7)(lambda b: seen.update(bodies(b)))
        app.run(until_idle=True)
    assert seen == Counter({b"%d" % i: 1 for i in range(100)})


def test_a_dead_letter_queue_consumed_by_the_same_app() -> None:
    clock = sc.VirtualClock()
    dead = sc.MemoryQueue(name="dlq", clock=clock)
    queue = sc.MemoryQueue(clock=clock, visibility_timeout=1, max_receive_count=1, dead_letter=dead)
    queue.send([b"x", b"y"])
    parked: list[bytes] = []
    with sc.App(clock=clock) as app:
        app.consumer(queue, name="main")(lambda b: 1 / 0)
        app.consumer(dead, name="parking")(lambda b: parked.extend(bodies(b)))
        app.run(until_idle=True)
    assert sorted(parked) == [b"x", b"y"]


# --------------------------------------------------------------------------
# properties: random sends, failure schedules and partial responses

OUTCOMES = ["ok", "ok", "ok", "raise", "partial", "invalid"]


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    fifo = draw(st.booleans())
    n = draw(st.integers(1, 30))
    groups = [draw(st.sampled_from("abcd")) for _ in range(n)] if fifo else None
    plans = [draw(st.lists(st.sampled_from(OUTCOMES), min_size=1, max_size=4)) for _ in range(n)]
    return {
        "fifo": fifo,
        "n": n,
        "groups": groups,
        "plans": plans,
        "batch_size": draw(st.integers(1, 10)),
        "max_receive_count": draw(st.integers(1, 3)),
        "max_concurrency": draw(st.sampled_from([None, 2, 3])),
        "sleeps": [draw(st.sampled_from([0, 0, 1, 4])) for _ in range(n)],
        "sends": draw(st.integers(1, 3)),
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_every_message_succeeds_or_is_dead_lettered(s: dict[str, Any]) -> None:
    clock = sc.VirtualClock()
    fifo = s["fifo"]
    dead = sc.MemoryQueue(name="dlq", fifo=fifo, clock=clock)
    max_rc = s["max_receive_count"]
    queue = sc.MemoryQueue(
        fifo=fifo, clock=clock, visibility_timeout=10, max_receive_count=max_rc, dead_letter=dead
    )
    check_scenario(s, clock, queue, dead)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_every_message_succeeds_or_is_dead_lettered_on_local_queues(s: dict[str, Any]) -> None:
    clock = sc.VirtualClock()
    fifo = s["fifo"]
    with tempfile.TemporaryDirectory() as folder:
        dead = sc.LocalQueue(Path(folder) / "dlq.db", fifo=fifo, clock=clock)
        queue = sc.LocalQueue(
            Path(folder) / "q.db",
            fifo=fifo,
            clock=clock,
            visibility_timeout=10,
            max_receive_count=s["max_receive_count"],
            dead_letter=dead,
        )
        try:
            check_scenario(s, clock, queue, dead)
        finally:
            queue.close()
            dead.close()


def check_scenario(s: dict[str, Any], clock: sc.VirtualClock, queue: Any, dead: Any) -> None:
    """Run scenario ``s`` on ``queue``: every message succeeds once or reaches ``dead`` after exactly
    max_receive_count receives; FIFO order per group; concurrency limits; no message in two handlers."""
    fifo = s["fifo"]
    max_rc = s["max_receive_count"]
    n = s["n"]
    payloads = [b"%d" % i for i in range(n)]
    position = {p: i for i, p in enumerate(payloads)}
    chunks = [payloads[i :: s["sends"]] for i in range(s["sends"])]
    sent_order = [p for chunk in chunks for p in chunk]
    violations: list[str] = []  # checked after the run: a failed assert in a handler is just a failure
    live = Live()
    lock = threading.Lock()
    receive_counts: dict[bytes, list[int]] = {p: [] for p in payloads}
    succeeded: Counter[bytes] = Counter()
    done: set[bytes] = set()  # succeeded, as seen by later handlers

    def handle(batch: sc.Batch) -> Any:
        rows = batch.records.to_pylist()
        batch_ids = [r["message_id"] for r in rows]
        live.enter(batch_ids)
        try:
            with lock:
                for k, r in enumerate(rows):
                    receive_counts[r["body"]].append(r["receive_count"])
                    if fifo:  # every message sent before it in its group is done or earlier in this batch
                        earlier = {x["body"] for x in rows[:k]}
                        for p in sent_order[: sent_order.index(r["body"])]:
                            if s["groups"][position[p]] != r["group_id"]:
                                continue
                            if p not in done and p not in earlier and p not in dead_bodies():
                                violations.append(f"{r['body']!r} delivered before {p!r}")
            clock.sleep(max(s["sleeps"][position[r["body"]]] for r in rows))
            outcomes = []
            for r in rows:
                plan = s["plans"][position[r["body"]]]
                outcomes.append(plan[min(r["receive_count"], len(plan)) - 1])
            if "raise" in outcomes:
                raise RuntimeError("planned failure")
            if "invalid" in outcomes:
                return {"batchItemFailures": [{"itemIdentifier": "unknown"}]}
            failed = [i for i, o in zip(batch_ids, outcomes, strict=True) if o == "partial"]
            with lock:
                for r, o in zip(rows, outcomes, strict=True):
                    if o != "partial":
                        succeeded[r["body"]] += 1
                        done.add(r["body"])
            return sc.BatchFailures(failed)
        finally:
            live.leave(batch_ids)

    moved: list[bytes] = []

    def dead_bodies() -> set[bytes]:
        return set(moved) | {b for b, c in receive_counts.items() if len(c) == max_rc and b not in done}

    with sc.App(clock=clock, concurrency=8) as app:
        app.consumer(
            queue,
            name="h",
            batch_size=s["batch_size"],
            report_failures=True,
            max_concurrency=s["max_concurrency"],
        )(handle)
        for chunk in chunks:
            if not chunk:
                continue
            options: dict[str, Any] = {}
            if fifo:
                options = {
                    "group_ids": [s["groups"][position[p]] for p in chunk],
                    "dedup_ids": [p.decode() for p in chunk],
                }
            queue.send(chunk, **options)
        app.run(until_idle=True)
        m = totals(app)
    moved = bodies_of(dead.receive(10_000))
    assert violations == []
    assert len(moved) == len(set(moved))
    for p in payloads:
        if p in moved:
            assert succeeded[p] == 0
            assert receive_counts[p] == list(range(1, max_rc + 1)), p  # exactly max_receive_count receives
        else:
            assert succeeded[p] == 1, (p, receive_counts[p])
            assert receive_counts[p] == list(range(1, len(receive_counts[p]) + 1))
    assert len(queue) == 0
    assert m["records_done"] == m["messages_deleted"] == n - len(moved)
    assert m["dead_lettered"] == len(moved)
    assert m["records_in"] == n
    assert live.overlaps == 0
    if s["max_concurrency"] is not None:
        assert live.peak <= s["max_concurrency"]
    assert live.peak <= 8
    if fifo:
        assert live.peak <= len(set(s["groups"]))
