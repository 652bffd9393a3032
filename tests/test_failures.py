"""Named failure-policy scenarios of SEMANTICS 2.4-2.8, through the public API."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

import streamcore as sc
from streamcore import _retry


def one_shard(n: int, clock: sc.VirtualClock, key: str = "k") -> sc.MemoryStream:
    stream = sc.MemoryStream(shards=1, clock=clock)
    stream.put([{"key": key, "n": i} for i in range(1, n + 1)])
    return stream


def ns(batch: sc.Batch) -> list[int]:
    return batch.records.column("n").to_pylist()


def test_bisect_worked_example() -> None:
    # SEMANTICS 2.5: 10 records, r7 always fails, bisect on, max_retries=2.
    clock = sc.VirtualClock()
    stream = one_shard(10, clock)
    app = sc.App(clock=clock)
    calls: list[list[int]] = []
    failed: list[sc.FailedBatch] = []

    @app.consumer(stream, batch_size=10, bisect_on_error=True, max_retries=2, on_failure=failed.append)
    def handle(batch: sc.Batch) -> None:
        calls.append(ns(batch))
        if 7 in ns(batch):
            raise ValueError("poison")

    app.run(until_idle=True)
    assert calls == [
        list(range(1, 11)), [1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [6, 7, 8], [6, 7], [6],
        [7], [7], [7], [8], [9, 10],
    ]
    assert len(failed) == 1
    dead = failed[0]
    assert (dead.first_seq, dead.last_seq, dead.size, dead.attempts) == (6, 6, 1, 3)
    assert dead.condition == "RetryAttemptsExhausted"
    assert dead.records.column("n").to_pylist() == [7]
    assert dead.error is not None and "poison" in dead.error
    assert app.checkpoints() == {"handle": {0: 9}}
    metrics = app.metrics()
    assert metrics["bisects"] == 4
    assert metrics["dead_lettered"] == 1
    assert metrics["records_done"] == 9
    assert metrics["invocations"] == 11


@pytest.mark.parametrize("max_retries", [0, 1, 2, 3])
def test_max_retries_gives_n_plus_one_invocations(max_retries: int) -> None:
    clock = sc.VirtualClock()
    stream = one_shard(3, clock)
    app = sc.App(clock=clock)
    attempts: list[int] = []
    failed: list[sc.FailedBatch] = []

    @app.consumer(stream, max_retries=max_retries, on_failure=failed.append)
    def handle(batch: sc.Batch) -> None:
        attempts.append(batch.attempt)
        raise RuntimeError("always")

    app.run(until_idle=True)
    assert attempts == list(range(1, max_retries + 2))
    assert [(f.size, f.attempts, f.condition) for f in failed] == [
        (3, max_retries + 1, "RetryAttemptsExhausted")
    ]
    doc = failed[0].to_aws()
    assert doc["requestContext"]["approximateInvokeCount"] == max_retries + 1
    assert doc["responseContext"]["functionError"] == "Unhandled"
    assert doc["KinesisBatchInfo"]["batchSize"] == 3
    assert app.checkpoints()["handle"][0] == 2  # past the discarded records


def test_retry_back_off_grows_on_the_clock() -> None:
    clock = sc.VirtualClock()
    stream = one_shard(1, clock)
    app = sc.App(clock=clock)
    times: list[float] = []

    @app.consumer(stream, max_retries=4, retry_backoff=(1.0, 2.0, 5.0))
    def handle(batch: sc.Batch) -> None:
        times.append(clock.now())
        raise RuntimeError("always")

    app.run(until_idle=True)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    nominal = [1.0, 2.0, 4.0, 5.0]
    assert len(gaps) == 4
    for gap, base in zip(gaps, nominal, strict=True):
        assert 0.5 * base <= gap <= min(5.0, 1.5 * base) + 1e-9


def test_retry_delay_function() -> None:
    assert _retry.retry_delay(1) == pytest.approx(0.5)
    assert _retry.retry_delay(2) == pytest.approx(0.75)
    assert _retry.retry_delay(100) == pytest.approx(60.0)
    assert _retry.retry_delay(3, jitter=0.0) == pytest.approx(0.5 * 1.125)
    assert _retry.failure_verdict(4, True, 0, 0) == "split"
    assert _retry.failure_verdict(1, True, 0, 0) == "discard"
    assert _retry.failure_verdict(1, True, 0, -1) == "retry"
    with pytest.raises(ValueError):
        _retry.retry_delay(0)


SUCCESSES: list[Any] = [
    None, "", [], {}, {"batchItemFailures": []}, {"batchItemFailures": None}, sc.BatchFailures([]),
]


@pytest.mark.parametrize("response", SUCCESSES, ids=repr)
def test_responses_that_succeed(response: Any) -> None:
    clock = sc.VirtualClock()
    stream = one_shard(2, clock)
    app = sc.App(clock=clock)
    calls = []

    @app.consumer(stream, report_failures=True, max_retries=2)
    def handle(batch: sc.Batch) -> Any:
        calls.append(ns(batch))
        return response

    app.run(until_idle=True)
    assert calls == [[1, 2]]
    assert app.checkpoints()["handle"][0] == 1


INVALID: list[Any] = [
    {"batchItemFailures": [{"itemIdentifier": ""}]},
    {"batchItemFailures": [{"itemIdentifier": None}]},
    {"batchItemFailures": [{"foo": 123}]},
    {"batchItemFailures": [{"foo": None}]},
    {"batchItemFailures": [{"itemIdentifier": "123"}]},  # not in the batch
    sc.BatchFailures([123]),
    5,
    "not a response",
    [1, 2],
]


@pytest.mark.parametrize("response", INVALID, ids=repr)
def test_responses_that_fail_the_whole_batch(response: Any) -> None:
    # SEMANTICS 2.8: max_retries=2, batch of 1: three invocations, functionError null.
    clock = sc.VirtualClock()
    stream = one_shard(1, clock)
    app = sc.App(clock=clock)
    failed: list[sc.FailedBatch] = []
    calls = []

    @app.consumer(stream, batch_size=1, report_failures=True, max_retries=2, on_failure=failed.append)
    def handle(batch: sc.Batch) -> Any:
        calls.append(batch.attempt)
        return response

    app.run(until_idle=True)
    assert calls == [1, 2, 3]
    assert len(failed) == 1 and failed[0].attempts == 3
    assert failed[0].to_aws()["responseContext"]["functionError"] is None
    assert "invalid batch response" in (failed[0].error or "")


def test_exception_with_report_failures_is_unhandled() -> None:
    clock = sc.VirtualClock()
    stream = one_shard(1, clock)
    app = sc.App(clock=clock)
    failed: list[sc.FailedBatch] = []

    @app.consumer(stream, report_failures=True, max_retries=2, on_failure=failed.append)
    def handle(batch: sc.Batch) -> None:
        raise KeyError("boom")

    app.run(until_idle=True)
    assert failed[0].attempts == 3
    assert failed[0].to_aws()["responseContext"]["functionError"] == "Unhandled"


def test_partial_failure_tail_example() -> None:
    # SEMANTICS 2.7: batch [r4, r5, r6], r6 reported failed each time, max_retries=3.
    clock = sc.VirtualClock()
    stream = one_shard(3, clock)
    app = sc.App(clock=clock)
    failed: list[sc.FailedBatch] = []
    calls = []

    @app.consumer(stream, report_failures=True, max_retries=3, on_failure=failed.append)
    def handle(batch: sc.Batch) -> dict[str, Any]:
        calls.append(ns(batch))
        return {"batchItemFailures": [{"itemIdentifier": str(batch.last_seq)}]}

    app.run(until_idle=True)
    assert calls == [[1, 2, 3], [3], [3], [3]]
    dead = failed[0]
    assert (dead.first_seq, dead.last_seq, dead.size, dead.attempts, dead.error) == (2, 2, 1, 4, None)
    assert dead.to_aws()["responseContext"]["functionError"] is None
    assert app.metrics()["records_done"] == 2


def test_partial_failure_checkpoints_before_lowest_failed_seq() -> None:
    clock = sc.VirtualClock()
    stream = one_shard(6, clock)
    app = sc.App(clock=clock)
    calls = []

    @app.consumer(stream, report_failures=True)
    def handle(batch: sc.Batch) -> sc.BatchFailures | None:
        calls.append(ns(batch))
        if batch.attempt == 1:
            return sc.BatchFailures([4, 2])  # seqs 2 and 4 (n = 3 and 5); lowest wins
        return None

    app.run(until_idle=True)
    assert calls == [[1, 2, 3, 4, 5, 6], [3, 4, 5, 6]]
    assert app.checkpoints()["handle"][0] == 5
    assert app.metrics()["retries"] == 1


def test_failure_list_ignored_without_report_failures() -> None:
    clock = sc.VirtualClock()
    stream = one_shard(2, clock)
    app = sc.App(clock=clock)
    calls = []

    @app.consumer(stream)
    def handle(batch: sc.Batch) -> sc.BatchFailures:
        calls.append(ns(batch))
        return sc.BatchFailures([0])

    app.run(until_idle=True)
    assert calls == [[1, 2]]


def test_expired_record_split_off_and_fresh_ones_delivered() -> None:
    # SEMANTICS 2.6: one record older than 60 s plus 5 new ones, batch 10, max_retries 0.
    clock = sc.VirtualClock()
    stream = sc.MemoryStream(shards=1, clock=clock)
    stream.put([{"key": "k", "n": 0}])
    clock.advance(61)
    stream.put([{"key": "k", "n": i} for i in range(1, 6)])
    app = sc.App(clock=clock)
    failed: list[sc.FailedBatch] = []
    calls = []

    @app.consumer(stream, batch_size=10, max_retries=0, max_record_age=60, on_failure=failed.append)
    def handle(batch: sc.Batch) -> None:
        calls.append(ns(batch))

    app.run(until_idle=True)
    assert calls == [[1, 2, 3, 4, 5]]
    assert [(f.condition, f.size, f.attempts) for f in failed] == [("RecordAgeExceeded", 1, 1)]
    doc = failed[0].to_aws()
    assert "responseContext" not in doc
    assert doc["requestContext"]["condition"] == "RecordAgeExceeded"


def test_record_age_ends_infinite_retries() -> None:
    clock = sc.VirtualClock()
    stream = one_shard(1, clock)
    app = sc.App(clock=clock)
    failed: list[sc.FailedBatch] = []
    calls = []

    @app.consumer(stream, max_record_age=60, on_failure=failed.append)
    def handle(batch: sc.Batch) -> None:
        calls.append(clock.now())
        raise RuntimeError("always")

    app.run(until_idle=True)
    assert len(failed) == 1 and failed[0].condition == "RecordAgeExceeded"
    assert failed[0].attempts == len(calls) >= 5  # AWS recorded 8 with its back-off
    assert calls[-1] - calls[0] <= 60


def test_poison_record_blocks_only_its_shard_lane() -> None:
    clock = sc.VirtualClock()
    stream = sc.MemoryStream(shards=2, clock=clock)
    rows = [{"key": f"k{i % 20}", "n": i} for i in range(200)]
    placed = stream.put(rows).to_pylist()
    poison_row = 5
    poison_shard = placed[poison_row]["shard"]
    app = sc.App(clock=clock)
    delivered: set[int] = set()

    @app.consumer(stream, batch_size=5, parallelization=4)
    def handle(batch: sc.Batch) -> None:
        if poison_row in ns(batch):
            raise ValueError("poison")
        delivered.update(ns(batch))

    app.run(timeout=3600)
    poison_key = rows[poison_row]["key"]
    other_shard = {r["n"] for r, p in zip(rows, placed, strict=True) if p["shard"] != poison_shard}
    assert other_shard <= delivered
    assert poison_row not in delivered
    assert {r["n"] for r in rows if r["key"] == poison_key and r["n"] > poison_row}.isdisjoint(delivered)
    checkpoint = app.checkpoints()["handle"][poison_shard]
    assert checkpoint is None or checkpoint < placed[poison_row]["seq"]
    assert app.metrics()["retries"] > 5
    assert app.metrics()["dead_lettered"] == 0


def test_timeout_counts_as_a_failed_attempt() -> None:
    clock = sc.VirtualClock()
    stream = one_shard(2, clock)
    app = sc.App(clock=clock)
    failed: list[sc.FailedBatch] = []
    attempts = []

    @app.consumer(stream, timeout=1.0, max_retries=1, on_failure=failed.append)
    def handle(batch: sc.Batch) -> None:
        attempts.append(batch.attempt)
        if batch.attempt == 1:
            clock.sleep(10)  # runs past the timeout; its late result is ignored

    app.run(until_idle=True)
    assert attempts == [1, 2]
    assert failed == []
    assert app.metrics()["errors"] == 1
    assert app.metrics()["records_done"] == 2


def test_timeout_error_reaches_on_failure() -> None:
    clock = sc.VirtualClock()
    stream = one_shard(1, clock)
    app = sc.App(clock=clock)
    failed: list[sc.FailedBatch] = []

    @app.consumer(stream, timeout=2.0, max_retries=0, on_failure=failed.append)
    def handle(batch: sc.Batch) -> None:
        clock.sleep(5)

    app.run(until_idle=True)
    assert failed[0].error == "Task timed out after 2.00 seconds"
    assert failed[0].to_aws()["responseContext"]["functionError"] == "Unhandled"


def test_on_failure_stream_receives_aws_document() -> None:
    clock = sc.VirtualClock()
    stream = one_shard(2, clock)
    dlq = sc.MemoryStream(shards=1, name="dlq", clock=clock)
    app = sc.App(clock=clock)

    @app.consumer(stream, max_retries=0, on_failure=dlq)
    def handle(batch: sc.Batch) -> None:
        raise RuntimeError("nope")

    app.run(until_idle=True)
    rows = dlq.shard_log(0).read(0, 1).to_pylist()
    assert rows[0]["key"] == "shardId-000000000000"
    doc = json.loads(rows[0]["data"])
    assert doc["KinesisBatchInfo"]["startSequenceNumber"] == "0"
    assert doc["KinesisBatchInfo"]["endSequenceNumber"] == "1"
    assert doc["requestContext"]["condition"] == "RetryAttemptsExhausted"


def test_failing_on_failure_is_retried_and_loses_nothing() -> None:
    clock = sc.VirtualClock()
    stream = one_shard(1, clock)
    app = sc.App(clock=clock)
    received: list[sc.FailedBatch] = []
    tries = []

    def destination(failed: sc.FailedBatch) -> None:
        tries.append(clock.now())
        if len(tries) < 3:
            raise OSError("destination down")
        received.append(failed)

    @app.consumer(stream, max_retries=0, on_failure=destination)
    def handle(batch: sc.Batch) -> None:
        raise RuntimeError("nope")

    app.run(until_idle=True)
    assert len(tries) == 3 and len(received) == 1
    assert app.checkpoints()["handle"][0] == 0
    assert app.metrics()["dead_lettered"] == 1


def test_throttles_never_consume_retries() -> None:
    clock = sc.VirtualClock()
    stream = sc.MemoryStream(shards=4, clock=clock)
    stream.put([{"key": f"k{i}", "n": i} for i in range(40)])
    app = sc.App(clock=clock, concurrency=1)
    live = []

    @app.consumer(stream, batch_size=3, max_retries=0)
    def handle(batch: sc.Batch) -> None:
        live.append(1)
        assert len(live) == 1
        clock.sleep(1)
        live.pop()

    app.run(until_idle=True)
    metrics = app.metrics()
    assert metrics["records_done"] == 40
    assert metrics["retries"] == 0 and metrics["dead_lettered"] == 0
    assert metrics["throttles"] > 0
