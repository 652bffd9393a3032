"""Tumbling windows (SEMANTICS 0.4, 2.9) through the public API, on a virtual clock."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

import streamcore as sc
from streamcore.checkpoints import ShardProgress

START = 1_700_000_000.0  # 1_699_999_980 is a multiple of 60: windows start 20 s before START


def filled_stream(clock: sc.VirtualClock, rows: int, gap: float, keys: int = 1) -> sc.MemoryStream:
    stream = sc.MemoryStream(shards=1, clock=clock)
    for i in range(rows):
        stream.put([{"key": f"k{i % keys}", "v": i}])
        clock.advance(gap)
    return stream


def window_start(t: float, size: int) -> datetime:
    return datetime.fromtimestamp(t // size * size, tz=timezone.utc)


def test_batches_never_span_windows_and_state_is_carried() -> None:
    clock = sc.VirtualClock(start=START)
    stream = filled_stream(clock, rows=12, gap=10)
    app = sc.App(clock=clock)
    seen: list[tuple[Any, ...]] = []

    @app.consumer(stream, batch_size=4, tumbling_window=60)
    def handle(batch: sc.Batch) -> None:
        assert batch.window is not None
        values = batch.records.column("v").to_pylist()
        if batch.is_final:
            assert len(batch) == 0
            seen.append(("final", batch.window.start, batch.state["sum"], batch.state["n"]))
            return
        for arrival in batch.records.column("arrival").to_pylist():
            assert batch.window.start <= arrival < batch.window.end
        batch.state["sum"] = batch.state.get("sum", 0) + sum(values)
        batch.state["n"] = batch.state.get("n", 0) + len(values)
        seen.append(("batch", batch.window.start, values))

    app.run(until_idle=True)
    finals = [s for s in seen if s[0] == "final"]
    # arrivals START + 10 i: windows of 60 s starting 20 s before START
    expected: dict[datetime, list[int]] = {}
    for i in range(12):
        expected.setdefault(window_start(START + 10 * i, 60), []).append(i)
    assert [(w, s, n) for _, w, s, n in finals] == [(w, sum(v), len(v)) for w, v in expected.items()]
    # every window ends with its closing invocation, after its batches
    for w in expected:
        kinds = [s[0] for s in seen if s[1] == w]
        assert kinds[-1] == "final" and kinds.count("final") == 1
    assert app.checkpoints()["handle"][0] == 11


def test_idle_window_closes_when_its_end_passes() -> None:
    clock = sc.VirtualClock(start=START)
    stream = filled_stream(clock, rows=2, gap=1)
    app = sc.App(clock=clock)
    finals: list[float] = []

    @app.consumer(stream, tumbling_window=60)
    def handle(batch: sc.Batch) -> None:
        if batch.is_final:
            finals.append(clock.now())

    app.run(until_idle=True)
    window_end = (START // 60 + 1) * 60
    assert finals == [window_end]


def test_state_is_committed_only_on_success() -> None:
    clock = sc.VirtualClock(start=START)
    stream = filled_stream(clock, rows=4, gap=1)
    app = sc.App(clock=clock)
    states_seen: list[dict[str, Any]] = []

    @app.consumer(stream, batch_size=2, tumbling_window=60)
    def handle(batch: sc.Batch) -> None:
        states_seen.append(dict(batch.state))
        if batch.is_final:
            return
        batch.state["n"] = batch.state.get("n", 0) + len(batch)
        if batch.first_seq == 2 and batch.attempt == 1:
            raise RuntimeError("fails after mutating the state")

    app.run(until_idle=True)
    assert states_seen == [{}, {"n": 2}, {"n": 2}, {"n": 4}]


def test_failed_closing_invocation_blocks_until_it_succeeds() -> None:
    clock = sc.VirtualClock(start=START)
    stream = filled_stream(clock, rows=3, gap=30)  # windows: [0], [1, 2]
    app = sc.App(clock=clock)
    log: list[tuple[str, int]] = []

    @app.consumer(stream, batch_size=10, tumbling_window=60, max_retries=0)
    def handle(batch: sc.Batch) -> None:
        kind = "final" if batch.is_final else "batch"
        log.append((kind, batch.attempt))
        if batch.is_final and batch.attempt < 3:
            raise RuntimeError("closing fails twice")

    app.run(until_idle=True)
    # max_retries does not discard a closing invocation: it has no records to discard
    assert log[:4] == [("batch", 1), ("final", 1), ("final", 2), ("final", 3)]
    assert log[4] == ("batch", 1)
    assert app.metrics()["dead_lettered"] == 0


def test_aws_style_state_in_the_response() -> None:
    clock = sc.VirtualClock(start=START)
    stream = filled_stream(clock, rows=3, gap=1)
    app = sc.App(clock=clock)
    final_state: list[dict[str, Any]] = []

    @app.consumer(stream, batch_size=1, tumbling_window=60, report_failures=True)
    def handle(batch: sc.Batch) -> dict[str, Any]:
        if batch.is_final:
            final_state.append(batch.state)
            return {"state": {}, "batchItemFailures": []}
        return {"state": {"count": batch.state.get("count", 0) + 1}, "batchItemFailures": []}

    app.run(until_idle=True)
    assert final_state == [{"count": 3}]


def test_state_over_the_limit_terminates_the_window_early() -> None:
    clock = sc.VirtualClock(start=START)
    stream = filled_stream(clock, rows=6, gap=1)
    app = sc.App(clock=clock)
    log: list[tuple[bool, bool, int]] = []

    @app.consumer(stream, batch_size=1, tumbling_window=60, max_state_bytes=12)
    def handle(batch: sc.Batch) -> None:
        log.append((batch.is_final, batch.terminated_early, len(batch.state.get("ids", []))))
        if not batch.is_final:
            batch.state.setdefault("ids", []).append(batch.first_seq)

    app.run(until_idle=True)
    early = [entry for entry in log if entry[1]]
    assert early, "the state outgrew 12 bytes, so some closing invocation came early"
    assert all(final for final, _, _ in early)
    # after an early closing the same window goes on with fresh state
    after = log[log.index(early[0]) + 1]
    assert after == (False, False, 0)
    assert log[-1][0] and not log[-1][1]  # the real end of the window


def test_invalid_state_fails_the_invocation() -> None:
    clock = sc.VirtualClock(start=START)
    stream = filled_stream(clock, rows=1, gap=1)
    app = sc.App(clock=clock)
    failed: list[sc.FailedBatch] = []

    @app.consumer(stream, tumbling_window=60, max_retries=0, on_failure=failed.append)
    def handle(batch: sc.Batch) -> None:
        if not batch.is_final:
            batch.state["bad"] = object()

    app.run(until_idle=True)
    assert len(failed) == 1 and "invalid window state" in (failed[0].error or "")


def test_closing_invocation_state_is_dropped_unchecked() -> None:
    """The state a closing invocation leaves is dropped (SEMANTICS 2.9): nothing to size or save."""
    clock = sc.VirtualClock(start=START)
    stream = filled_stream(clock, rows=1, gap=1)
    app = sc.App(clock=clock)
    finals: list[bool] = []

    @app.consumer(stream, tumbling_window=60, max_retries=0, on_failure=lambda failed: None)
    def handle(batch: sc.Batch) -> None:
        if batch.is_final:
            batch.state["unsaveable"] = object()
            finals.append(True)

    app.run(until_idle=True)
    assert finals == [True]
    assert app.metrics()["errors"] == 0


def test_state_per_lane_with_parallelization() -> None:
    clock = sc.VirtualClock(start=START)
    stream = filled_stream(clock, rows=40, gap=0.5, keys=8)
    app = sc.App(clock=clock)
    finals: dict[int, int] = {}
    lanes_of_key: dict[str, set[int]] = {}

    @app.consumer(stream, batch_size=3, parallelization=4, tumbling_window=60)
    def handle(batch: sc.Batch) -> None:
        if batch.is_final:
            finals[batch.lane] = finals.get(batch.lane, 0) + batch.state.get("n", 0)
            return
        for key in batch.records.column("key").to_pylist():
            lanes_of_key.setdefault(key, set()).add(batch.lane)
        batch.state["n"] = batch.state.get("n", 0) + len(batch)

    app.run(until_idle=True)
    assert sum(finals.values()) == 40
    assert all(len(lanes) == 1 for lanes in lanes_of_key.values())


def test_restart_resumes_the_open_window_state() -> None:
    clock = sc.VirtualClock(start=START)
    stream = sc.MemoryStream(shards=1, clock=clock)
    store = sc.MemoryCheckpoints()
    stream.put([{"key": "k", "v": 1}, {"key": "k", "v": 2}])

    def make_app(sink: list[Any]) -> sc.App:
        app = sc.App(store, clock=clock)

        @app.consumer(stream, batch_size=10, tumbling_window=60)
        def windowed(batch: sc.Batch) -> None:
            if batch.is_final:
                sink.append(dict(batch.state))
            else:
                batch.state["sum"] = batch.state.get("sum", 0) + sum(batch.records["v"].to_pylist())

        return app

    first: list[Any] = []
    app = make_app(first)
    app.run(until_idle=False, timeout=1)  # the window is still open after 1 s
    app.close()
    assert first == []
    stream.put([{"key": "k", "v": 10}])
    second: list[Any] = []
    make_app(second).run(until_idle=True)
    assert second == [{"sum": 13}]


def test_window_state_may_hold_bytes() -> None:
    clock = sc.VirtualClock(start=START)
    stream = filled_stream(clock, rows=2, gap=1)
    store = sc.MemoryCheckpoints()
    app = sc.App(store, clock=clock)
    finals: list[Any] = []

    @app.consumer(stream, batch_size=1, tumbling_window=60)
    def handle(batch: sc.Batch) -> None:
        if batch.is_final:
            finals.append(batch.state["blob"])
        else:
            batch.state["blob"] = batch.state.get("blob", b"") + b"\x00\xff"

    app.run(until_idle=True)
    assert finals == [b"\x00\xff\x00\xff"]


def test_a_live_aggregator_in_window_state_is_copied_per_invocation_and_persisted() -> None:
    clock = sc.VirtualClock(start=START)
    stream = sc.MemoryStream(shards=1, clock=clock)
    stream.put([{"key": f"u{i % 3}", "v": float(i)} for i in range(9)])
    store = sc.MemoryCheckpoints()
    app = sc.App(store, clock=clock)
    results: list[list[dict[str, Any]]] = []
    seen_groups: list[int] = []

    @app.consumer(stream, batch_size=2, tumbling_window=60)
    def handle(batch: sc.Batch) -> None:
        agg = batch.state.setdefault("agg", sc.Aggregator(by=["key"], count=True, sum=["v"]))
        if batch.is_final:
            results.append(agg.result().sort_by("key").to_pylist())
            return
        agg.update(batch.records)
        seen_groups.append(len(agg))
        if batch.first_seq == 4 and batch.attempt == 1:
            raise RuntimeError("fails after updating the aggregator: nothing is committed")

    app.run(until_idle=True)
    assert results == [[
        {"key": "u0", "count": 3, "v_sum": 9.0},
        {"key": "u1", "count": 3, "v_sum": 12.0},
        {"key": "u2", "count": 3, "v_sum": 15.0},
    ]]
    # The checkpoint store serialises an aggregator only when asked to (a durable store)
    progress = ShardProgress(0, [0], states={0: [1, {"agg": sc.Aggregator(by=["key"], count=True)}]})
    restored = ShardProgress(0, [0], progress.windows).states
    assert isinstance(restored[0][1]["agg"], sc.Aggregator)


def test_state_copy_shares_immutables_copies_the_rest_and_keeps_aliasing() -> None:
    """What each window invocation gets: a copy a failed invocation cannot leak into."""
    from streamcore.windows import copy_state, state_nbytes

    agg = sc.Aggregator(by=["k"])
    agg.update(pa.table({"k": ["a", "b"]}))
    shared = [1, 2]
    state = {"n": 3, "s": "x", "agg": agg, "same_agg": agg, "list": shared, "alias": shared}
    copied = copy_state(state)
    assert copied == {**state, "agg": copied["agg"], "same_agg": copied["agg"]}
    assert copied["n"] is state["n"] and copied["s"] is state["s"]
    assert copied["agg"] is not agg and copied["same_agg"] is copied["agg"]
    assert copied["list"] is not shared and copied["alias"] is copied["list"]
    copied["agg"].update(pa.table({"k": ["c"]}))
    copied["list"].append(3)
    assert len(agg) == 2 and shared == [1, 2]
    assert len(copied["agg"]) == 3

    # Sizes: the JSON of the rest plus each aggregator's native bytes (a shared one twice).
    rest = state_nbytes({"n": 3, "s": "x", "list": shared, "alias": shared})
    assert state_nbytes(state) == rest + 2 * agg.nbytes
    assert state_nbytes({"agg": agg}) == 2 + agg.nbytes
    assert state_nbytes({}) == 2
