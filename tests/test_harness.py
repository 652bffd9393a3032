"""``streamcore.testing``: the harness catches broken consumers and passes correct ones.

Each broken consumer below has a bug that only failures expose (a clean run
of it looks fine); the harness must find a counterexample for each. The
correct consumers must survive every kind of injected fault.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import streamcore as sc
from streamcore.testing import (
    FAULT_KINDS,
    ConsumerCheckError,
    Delivery,
    DeliveryLog,
    FailureSchedule,
    Fault,
    InvariantViolation,
    assert_checkpoints_monotonic,
    assert_key_order,
    assert_no_loss,
    check_consumer,
    consumer_options,
    failure_schedules,
    fault_point,
    records,
)

Consumer = tuple[Callable[[sc.Batch], Any], Callable[[], Any]]

SMALL = records(max_rows=30, key_cardinality=(1, 6))

# Finding a counterexample is what these tests check; shrinking it costs most of the time, so
# only the first one shrinks (and checks that the result is small).
FIND_ONLY = settings(
    max_examples=60,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def rows(batch: sc.Batch, *columns: str) -> list[tuple[Any, ...]]:
    data = [batch.records.column(c).to_pylist() for c in columns]
    return list(zip(*data, strict=True))


# -- consumers the harness must catch --------------------------------------------------------


def counting_consumer() -> Consumer:
    """Counts records per key with a plain increment: a redelivered batch is counted twice."""
    counts: dict[Any, int] = {}

    def handle(batch: sc.Batch) -> None:
        for (key,) in rows(batch, "key"):
            counts[key] = counts.get(key, 0) + 1

    return handle, lambda: counts


def skip_attempted_consumer() -> Consumer:
    """Remembers which records it *attempted* and skips them on a retry.

    When the write of a record fails halfway through a batch, that record was
    attempted but never written: the retry skips it and its effect is lost.
    """
    db: dict[tuple[int, int], int] = {}
    attempted: set[tuple[int, int]] = set()

    def handle(batch: sc.Batch) -> None:
        for seq, value in rows(batch, "seq", "value"):
            if (batch.shard, seq) in attempted:
                continue  # "we already tried this one"
            attempted.add((batch.shard, seq))
            fault_point("before the write")  # the downstream write may fail here
            db[(batch.shard, seq)] = value

    return handle, lambda: db


def global_watermark_consumer() -> Consumer:
    """Keeps each key's latest value, deduplicating with ONE high-water mark of seqs.

    That assumes one global order of records; but seqs are per shard and lanes
    run independently, so which records it skips depends on how lanes and
    shards happen to interleave, which retries change.
    """
    latest: dict[Any, int] = {}
    watermark = [-1]

    def handle(batch: sc.Batch) -> None:
        for seq, key, value in rows(batch, "seq", "key", "value"):
            if seq <= watermark[0]:
                continue  # "already applied"
            watermark[0] = seq
            latest[key] = value

    return handle, lambda: latest


# -- consumers the harness must pass -----------------------------------------------------------


def upsert_consumer() -> Consumer:
    """Writes each record's effect under its (shard, seq): idempotent under redelivery."""
    db: dict[tuple[int, int], tuple[Any, int]] = {}

    def handle(batch: sc.Batch) -> None:
        for seq, key, value in rows(batch, "seq", "key", "value"):
            fault_point()
            db[(batch.shard, seq)] = (key, value)

    return handle, lambda: db


WINDOW = 60


def windowed_sum_consumer() -> Consumer:
    """Sums ``value`` per tumbling window in ``batch.state``; emits the sum on the closing invocation."""
    sums: dict[tuple[int, int, datetime], tuple[int, int]] = {}

    def handle(batch: sc.Batch) -> None:
        assert batch.window is not None and batch.state is not None
        if batch.is_final:
            fault_point("before emitting the window")
            sums[(batch.shard, batch.lane, batch.window.start)] = (batch.state["sum"], batch.state["n"])
            return
        values = batch.records.column("value").to_pylist()
        batch.state["sum"] = batch.state.get("sum", 0) + sum(values)
        batch.state["n"] = batch.state.get("n", 0) + len(values)

    return handle, lambda: sums


# -- the harness catches ----------------------------------------------------------------------


def test_catches_a_consumer_that_is_not_idempotent() -> None:
    with pytest.raises(ConsumerCheckError) as info:
        check_consumer(counting_consumer, SMALL, shards=2, max_examples=40)
    error = info.value
    assert error.reason == "effects"
    # Shrunk: one fault that redelivers one record is enough.
    assert len(error.fired) == 1, error.fired
    assert "records: 1 rows" in str(error)
    _, expected, got = error.differences[0]
    assert got > expected  # counted twice
    message = str(error)
    assert "first difference" in message and f"expected {expected!r}, got {got!r}" in message
    assert "faults that struck" in message and "deliveries:" in message


def test_catches_a_consumer_that_skips_records_it_attempted() -> None:
    with pytest.raises(ConsumerCheckError) as info:
        check_consumer(
            skip_attempted_consumer,
            SMALL,
            options=consumer_options(report_failures=False),
            kinds=["fail_before", "fail_after", "fail_midway", "crash_midway"],
            settings=FIND_ONLY,
        )
    error = info.value
    assert error.reason == "effects"
    # The lost record's effect is missing, and a midway fault struck.
    assert any(got is sc.testing.MISSING for _, _, got in error.differences)
    assert any("midway" in fired for fired in error.fired)
    assert "<missing>" in str(error)


def test_catches_a_consumer_that_assumes_a_global_order() -> None:
    with pytest.raises(ConsumerCheckError) as info:
        check_consumer(
            global_watermark_consumer,
            records(min_rows=2, max_rows=30, key_cardinality=(2, 6)),
            options=consumer_options(parallelization=(1, 3)),
            shards=st.integers(2, 3),  # one shard of one lane has one order: nothing to find
            settings=FIND_ONLY,
        )
    assert info.value.reason == "effects"


def test_an_oracle_catches_a_bug_the_clean_run_already_has() -> None:
    def expected(placed: pa.Table) -> dict[Any, int]:
        return dict(zip(placed.column("key").to_pylist(), placed.column("value").to_pylist(), strict=True))

    table = pa.table({"key": ["a", "b", "a", "c"], "value": [1, 2, 3, 4]})
    with pytest.raises(ConsumerCheckError) as info:
        check_consumer(
            global_watermark_consumer,
            table,
            options={"batch_size": 2},
            shards=3,
            expected=expected,
            max_examples=5,
        )
    assert info.value.reason == "expected"
    assert info.value.schedule == FailureSchedule()


def test_a_consumer_that_always_fails_is_reported_stuck_not_looped_forever() -> None:
    def failing() -> Consumer:
        def handle(batch: sc.Batch) -> None:
            raise RuntimeError("downstream is down")

        return handle, dict

    table = pa.table({"key": ["a"], "value": [1]})
    with pytest.raises(ConsumerCheckError, match="downstream is down") as info:
        check_consumer(failing, table, options={}, max_examples=2)
    assert info.value.reason == "stuck"


def test_a_consumer_with_nondeterministic_effects_is_reported() -> None:
    # Whether or not hypothesis can replay the failure, the user gets a ConsumerCheckError.
    coin = random.SystemRandom()

    def coin_flipper() -> Consumer:
        effects: dict[str, bool] = {}

        def handle(batch: sc.Batch) -> None:
            effects["heads"] = coin.random() < 0.5

        return handle, lambda: effects

    table = pa.table({"key": ["a", "b"], "value": [1, 2]})
    with pytest.raises(ConsumerCheckError) as info:
        check_consumer(coin_flipper, table, options={}, max_examples=30)
    assert info.value.reason == "effects"


# -- the harness passes -------------------------------------------------------------------------


def test_passes_an_idempotent_consumer_under_every_fault() -> None:
    check_consumer(
        upsert_consumer,
        records(max_rows=60, key_cardinality=(1, 8)),
        shards=st.integers(1, 3),
        max_examples=40,
    )


def test_passes_an_idempotent_consumer_with_concurrent_lanes() -> None:
    check_consumer(
        upsert_consumer,
        records(max_rows=40, key_type="int"),
        options=consumer_options(parallelization=(2, 4)),
        shards=2,
        concurrency=8,
        max_examples=15,
    )


def test_passes_a_windowed_aggregation() -> None:
    check_consumer(
        windowed_sum_consumer,
        records(max_rows=40, key_cardinality=(1, 4)),
        options=consumer_options(tumbling_window=WINDOW, batch_size=(1, 8)),
        shards=st.integers(1, 2),
        spacing=7.0,  # rows arrive 7 s apart: a 40-row table spans several windows
        max_examples=40,
    )


def test_passes_on_a_fixed_table_with_an_oracle() -> None:
    table = pa.table({"key": ["a", "b", "a", "c", "b", "a"], "value": [1, 2, 3, 4, 5, 6]})

    def expected(placed: pa.Table) -> dict[tuple[int, int], tuple[Any, int]]:
        cols = [placed.column(c).to_pylist() for c in ("shard", "seq", "key", "value")]
        return {(s, q): (k, v) for s, q, k, v in zip(*cols, strict=True)}

    check_consumer(
        upsert_consumer, table, options={"batch_size": 2}, shards=2, expected=expected, max_examples=20
    )


# -- the strategies ---------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(records(min_rows=3, max_rows=50, key_cardinality=4, key_type="bytes", payload="bytes"))
def test_records_have_the_asked_shape(table: pa.Table) -> None:
    assert table.column_names == ["key", "data"]
    assert table.schema.field("key").type == pa.binary()
    assert 3 <= table.num_rows <= 50
    assert len(set(table.column("key").to_pylist())) <= 4
    assert table.column("key").null_count == 0


@settings(max_examples=30, deadline=None)
@given(
    failure_schedules(10, kinds=["partial", "crash_after"], max_faults=3, closing=True), consumer_options()
)
def test_schedules_and_options_stay_in_range(schedule: FailureSchedule, options: dict[str, Any]) -> None:
    assert len(schedule) <= 3
    for fault in schedule.faults:
        assert fault.kind in ("partial", "crash_after") and 0 <= fault.row < 10
    assert 1 <= options["batch_size"] <= 20 and 1 <= options["parallelization"] <= 3
    assert options["max_retries"] == -1


def test_fault_kinds_are_validated() -> None:
    assert "crash_midway" in FAULT_KINDS
    with pytest.raises(ValueError, match="kind='explode'"):
        Fault("explode", 0)
    with pytest.raises(ValueError, match="kinds"):
        failure_schedules(5, kinds=["nope"])
    assert Fault("fail_after", 3, delivery=2).describe() == "fail_after on the 2nd delivery of row 3"


# -- the invariant checkers -------------------------------------------------------------------------


def test_delivery_log_feeds_the_checkers() -> None:
    clock = sc.VirtualClock()
    stream = sc.MemoryStream(shards=2, clock=clock)
    placed = stream.put(pa.table({"key": ["a", "b", "a", "c", "a"], "value": [1, 2, 3, 4, 5]}))
    app = sc.App(clock=clock)
    failed_once: set[int] = set()

    def flaky(batch: sc.Batch) -> None:
        if batch.first_seq not in failed_once:
            failed_once.add(batch.first_seq)
            raise RuntimeError("once")

    log = DeliveryLog(flaky)
    samples: list[dict[str, dict[int, int | None]]] = []
    app.consumer(stream, name="c", batch_size=2)(log)
    app.run(until_idle=True)
    samples.append(app.checkpoints())
    assert_no_loss(log, placed)
    assert_key_order(log)
    assert_checkpoints_monotonic(samples)
    assert len(log) > len({(d.shard, d.seqs) for d in log})  # every batch came twice
    assert {r[:2] for r in log.records()} == set(
        zip(placed["shard"].to_pylist(), placed["seq"].to_pylist(), strict=True)
    )


def test_assert_no_loss_names_the_missing_records() -> None:
    assert_no_loss([(0, 0), (0, 1), (0, 1)], [(0, 0), (0, 1)])
    with pytest.raises(InvariantViolation, match=r"1 of 3 records .*shard 1 seq 0 \(key 'x'\)") as info:
        assert_no_loss([(0, 0, "a"), (0, 1, "a")], [(0, 0, "a"), (0, 1, "a"), (1, 0, "x")])
    assert info.value.details == [(1, 0, "x")]
    assert_no_loss([(0, 0)], [(0, 0), (1, 0)], discarded=[(1, 0)])


def test_assert_key_order_uses_first_deliveries() -> None:
    # A redelivery of older records is fine...
    assert_key_order([(0, 0, "a"), (0, 1, "a"), (0, 0, "a"), (0, 2, "a"), (0, 1, "b")])
    # ...a record delivered for the first time before an earlier record of its key is not.
    with pytest.raises(
        InvariantViolation, match=r"key 'a' on shard 0 .* seq 1 was first delivered after seq 2"
    ):
        assert_key_order([(0, 0, "a"), (0, 2, "a"), (0, 1, "a")])
    delivery = Delivery(0, shard=0, lane=0, seqs=(3, 1), keys=("k", "k"))
    with pytest.raises(InvariantViolation):
        assert_key_order([delivery])


def test_assert_checkpoints_monotonic_accepts_every_sample_format() -> None:
    assert_checkpoints_monotonic([{"c": {0: None, 1: 3}}, {"c": {0: 2, 1: 3}}, {"c": {0: 5, 1: 9}}])
    assert_checkpoints_monotonic([{0: 1}, {0: 1, 1: 0}, (0, 4), ("c", 0, 1)])
    with pytest.raises(InvariantViolation, match="consumer 'c' shard 1 went back from 9 to 4 at sample 1"):
        assert_checkpoints_monotonic([{"c": {1: 9}}, {"c": {1: 4}}])
    with pytest.raises(InvariantViolation, match="shard 0 went back from 2 to None"):
        assert_checkpoints_monotonic([{0: 2}, {0: None}])


def test_fault_point_is_a_no_op_outside_the_harness() -> None:
    fault_point()
    fault_point("anywhere")


def test_window_start_in_deliveries() -> None:
    clock = sc.VirtualClock(start=1_700_000_000.0)
    stream = sc.MemoryStream(clock=clock)
    stream.put([{"key": "a", "value": 1}])
    app = sc.App(clock=clock)
    log = DeliveryLog()
    app.consumer(stream, name="w", tumbling_window=WINDOW)(log)
    app.run(until_idle=True)
    start = datetime.fromtimestamp(1_700_000_000 // WINDOW * WINDOW, tz=timezone.utc)
    assert [(d.is_final, d.window_start) for d in log] == [(False, start), (True, start)]
    assert log.deliveries[0].window_start + timedelta(seconds=WINDOW) > start
