"""Option validation, bad records, handler failures and the Batch's fields.

Public API only (``import streamcore as sc``); the ranges are those of API.md.
"""

from __future__ import annotations

import re
import threading
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pytest
from reference import key_hash, lane_of, partition, shard_of

import streamcore as sc

START = 1_700_000_000.0


def noop(batch: Any) -> None:
    return None


def make() -> tuple[Any, Any, Any]:
    clock = sc.VirtualClock()
    stream = sc.MemoryStream(shards=2, clock=clock)
    app = sc.App(clock=clock)
    return clock, stream, app


def collect(stream: Any, clock: Any, **opts: Any) -> list[Any]:
    """Run a fresh consumer over ``stream`` to the end; return its batches' records."""
    got: list[Any] = []
    lock = threading.Lock()

    def handle(batch: Any) -> None:
        with lock:
            got.append(batch.records)

    with sc.App(clock=clock) as app:
        app.consumer(stream, **opts)(handle)
        app.run(until_idle=True)
    return got


def rows_of(batches: list[Any], column: str) -> list[Any]:
    return sorted(v for b in batches for v in b.column(column).to_pylist())


def keys_in_shard(n_shards: int, shard: int, count: int, prefix: str = "k") -> list[str]:
    """``count`` distinct string keys that land in ``shard`` of ``n_shards``."""
    out = []
    i = 0
    while len(out) < count:
        k = f"{prefix}{i}"
        if shard_of(key_hash(k), n_shards) == shard:
            out.append(k)
        i += 1
    return out


# --------------------------------------------------------------------------
# consumer options

BAD_OPTIONS = [
    ("batch_size", 1.5),
    ("batch_size", True),
    ("batch_size", "10"),
    ("parallelization", 2.5),
    ("batch_window", float("nan")),
    ("batch_window", float("inf")),
    ("max_record_age", float("nan")),
    ("tumbling_window", float("nan")),
    ("tumbling_window", 0.5),
    ("timeout", float("nan")),
    ("timeout", float("inf")),
    ("batch_size", 0),
    ("batch_size", -1),
    ("batch_size", 10001),
    ("batch_window", -1),
    ("batch_window", -0.5),
    ("batch_window", 301),
    ("batch_window", 300.5),
    ("max_batch_bytes", 0),
    ("max_batch_bytes", -1),
    ("parallelization", 0),
    ("parallelization", 11),
    ("parallelization", -3),
    ("starting_position", "EARLIEST"),
    ("starting_position", ""),
    ("starting_position", "TRIM-HORIZON"),
    ("max_retries", -2),
    ("max_retries", 10001),
    ("max_record_age", -2),
    ("max_record_age", 0),
    ("max_record_age", 59),
    ("max_record_age", 604801),
    ("tumbling_window", 0),
    ("tumbling_window", -1),
    ("tumbling_window", 901),
    ("timeout", 0),
    ("timeout", -1),
    ("timeout", -0.001),
]


@pytest.mark.parametrize(("option", "value"), BAD_OPTIONS)
def test_option_out_of_range_is_a_value_error_naming_it(option: str, value: Any) -> None:
    _, stream, app = make()
    with app, stream:
        with pytest.raises(ValueError) as excinfo:
            app.consumer(stream, **{option: value})(noop)
        message = str(excinfo.value)
        assert option in message
        assert repr(value) in message or str(value) in message
        # a rejected consumer does not take its name
        app.consumer(stream)(noop)


GOOD_OPTIONS = [
    ("batch_size", 1),
    ("batch_size", 10000),
    ("batch_window", 0),
    ("batch_window", 0.0),
    ("batch_window", 300),
    ("batch_window", 2.5),
    ("max_batch_bytes", 1),
    ("max_batch_bytes", 10 * 2**20),
    ("parallelization", 1),
    ("parallelization", 10),
    ("starting_position", "TRIM_HORIZON"),
    ("starting_position", "LATEST"),
    ("max_retries", -1),
    ("max_retries", 0),
    ("max_retries", 10000),
    ("max_record_age", -1),
    ("max_record_age", 60),
    ("max_record_age", 604800),
    ("tumbling_window", None),
    ("tumbling_window", 1),
    ("tumbling_window", 900),
    ("timeout", 0.001),
    ("timeout", 900),
]


@pytest.mark.parametrize(("option", "value"), GOOD_OPTIONS)
def test_option_in_range_is_accepted(option: str, value: Any) -> None:
    _, stream, app = make()
    with app, stream:
        app.consumer(stream, **{option: value})(noop)


def test_starting_position_with_its_parameter_is_accepted() -> None:
    _, stream, app = make()
    with app, stream:
        app.consumer(stream, name="a", starting_position="AT_TIMESTAMP", starting_timestamp=START)(noop)
        app.consumer(stream, name="b", starting_position="AT_SEQUENCE", starting_sequence={0: 0})(noop)


def test_duplicate_consumer_name_is_a_value_error() -> None:
    _, stream, app = make()
    other = sc.MemoryStream(shards=1, clock=sc.VirtualClock())
    with app, stream, other:
        app.consumer(stream)(noop)
        with pytest.raises(ValueError, match="noop"):
            app.consumer(stream)(noop)
        app.consumer(stream, name="x")(noop)
        with pytest.raises(ValueError, match="x"):
            app.consumer(other, name="x")(noop)


def test_same_name_in_two_apps_is_fine() -> None:
    clock, stream, app = make()
    with app, stream, sc.App(clock=clock) as app2:
        app.consumer(stream)(noop)
        app2.consumer(stream)(noop)


@pytest.mark.parametrize("handler", [42, "handle", None])
def test_non_callable_handler_is_rejected(handler: Any) -> None:
    _, stream, app = make()
    with app, stream, pytest.raises((TypeError, ValueError)):
        app.consumer(stream)(handler)


@pytest.mark.parametrize("shards", [0, -1])
def test_memory_stream_needs_a_shard(shards: int) -> None:
    with pytest.raises(ValueError, match="shards"):
        sc.MemoryStream(shards=shards)


@pytest.mark.parametrize("retention", [-1.0, -0.001, float("nan")])
def test_memory_stream_rejects_bad_retention(retention: float) -> None:
    with pytest.raises(ValueError, match="retention"):
        sc.MemoryStream(shards=1, retention=retention)


@pytest.mark.parametrize(
    ("position", "missing"),
    [("AT_TIMESTAMP", "starting_timestamp"), ("AT_SEQUENCE", "starting_sequence")],
)
def test_starting_position_without_its_parameter(position: str, missing: str) -> None:
    _, stream, app = make()
    with app, stream, pytest.raises(ValueError, match=missing):
        app.consumer(stream, starting_position=position)(noop)


# --------------------------------------------------------------------------
# bad records: ValueError, and nothing of that put is stored


def assert_nothing_stored(stream: Any, clock: Any, n_shards: int) -> None:
    assert collect(stream, clock) == []
    # every shard still starts at seq 0
    keys = [keys_in_shard(n_shards, s, 1, prefix="fresh")[0] for s in range(n_shards)]
    res = stream.put(pa.table({"key": keys}))
    assert res.column("shard").to_pylist() == list(range(n_shards))
    assert res.column("seq").to_pylist() == [0] * n_shards


def null_key_inputs() -> dict[str, tuple[Any, dict[str, Any], int]]:
    """form -> (data, put kwargs, the 0-based row of the first null key)."""
    keys = ["a", "b", "c", None, None, "d"]
    payload = [f"p{i}".encode() for i in range(len(keys))]
    dicts = [{"key": k, "v": i} for i, k in enumerate(keys)]
    missing = [{"user_id": "u", "v": 0}, {"user_id": "w", "v": 1}, {"user_id": "u", "v": 2}]
    missing.append({"v": 3})
    t = pa.table({"key": ["a", "b", "c", "d", None, "f", "g"], "v": range(7)})
    ints = [pa.table({"key": pa.array(v, pa.int64())}) for v in ([1, 2], [3, None])]
    return {
        "table": (pa.table({"key": keys, "v": range(len(keys))}), {}, 3),
        "record_batch": (pa.record_batch({"key": keys, "v": range(len(keys))}), {}, 3),
        "int_table": (pa.table({"key": pa.array([1, 2, 3, None, None, 6], pa.int64())}), {}, 3),
        "dicts": (dicts, {}, 3),
        "dicts_missing_field": (missing, {"key": "user_id"}, 3),
        "bytes": (payload, {"keys": keys}, 3),
        # rows count from the start of the input, across chunks and after slicing
        "chunked": (pa.concat_tables([t.slice(0, 3), t.slice(3)]), {}, 4),
        "sliced": (t.slice(2), {}, 2),
        "sliced_chunked": (pa.concat_tables([t.slice(1, 2), t.slice(3, 3)]), {}, 3),
        "int_chunked": (pa.concat_tables(ints), {}, 3),
        "record_batch_sliced": (t.to_batches()[0].slice(1), {}, 3),
    }


@pytest.mark.parametrize("form", list(null_key_inputs()))
def test_null_key_names_the_first_bad_row_and_stores_nothing(form: str) -> None:
    data, kwargs, bad_row = null_key_inputs()[form]
    clock = sc.VirtualClock()
    with sc.MemoryStream(shards=3, clock=clock) as stream:
        with pytest.raises(ValueError) as excinfo:
            stream.put(data, **kwargs)
        assert re.search(rf"\b{bad_row}\b", str(excinfo.value)), str(excinfo.value)
        row = getattr(excinfo.value, "row", bad_row)
        assert row == bad_row
        assert_nothing_stored(stream, clock, 3)


@pytest.mark.parametrize(
    ("data", "kwargs", "word"),
    [
        (pa.table({"k": ["a"], "v": [1]}), {}, "key"),
        (pa.table({"k": ["a"], "v": [1]}), {"key": "user_id"}, "user_id"),
        (pa.table({"user_id": ["a"], "key": ["b"]}), {"key": "user_id"}, "key"),
        ([{"k": "a", "v": 1}], {}, "key"),
        (pa.table({"key": [1.5, 2.5]}), {}, "key"),
        (pa.table({"key": pa.array([1.5], pa.float32())}), {}, "key"),
        ([{"key": 0.5, "v": 1}], {}, "key"),
        (pa.table({"key": ["a", "b"], "seq": [1, 2]}), {}, "seq"),
        (pa.table({"key": ["a", "b"], "arrival": [1, 2]}), {}, "arrival"),
        ([{"key": "a", "seq": 7}], {}, "seq"),
        ([b"x", b"y"], {}, "key"),
        ([b"x", b"y"], {"keys": ["a"]}, "key"),
        ([b"x", b"y"], {"keys": ["a", "b", "c"]}, "key"),
    ],
    ids=[
        "missing_key_column",
        "missing_named_key",
        "key_column_beside_named_key",
        "dicts_without_key",
        "float_key",
        "float32_key",
        "dicts_float_key",
        "reserved_seq",
        "reserved_arrival",
        "dicts_reserved_seq",
        "bytes_without_keys",
        "keys_too_short",
        "keys_too_long",
    ],
)
def test_bad_records_are_value_errors_and_store_nothing(data: Any, kwargs: dict[str, Any], word: str) -> None:
    clock = sc.VirtualClock()
    with sc.MemoryStream(shards=2, clock=clock) as stream:
        with pytest.raises(ValueError) as excinfo:
            stream.put(data, **kwargs)
        assert word in str(excinfo.value)
        assert_nothing_stored(stream, clock, 2)


@pytest.mark.parametrize(
    "data",
    [
        pa.table({"key": pa.array([], pa.string()), "v": pa.array([], pa.int64())}),
        pa.record_batch({"key": pa.array([], pa.binary())}),
        [],
    ],
    ids=["table", "record_batch", "list"],
)
def test_empty_put_returns_an_empty_table(data: Any) -> None:
    clock = sc.VirtualClock()
    with sc.MemoryStream(shards=2, clock=clock) as stream:
        res = stream.put(data)
        assert isinstance(res, pa.Table)
        assert res.num_rows == 0
        assert res.schema.field("shard").type == pa.int64()
        assert res.schema.field("seq").type == pa.uint64()
        assert_nothing_stored(stream, clock, 2)


def test_empty_bytes_put_with_empty_keys() -> None:
    clock = sc.VirtualClock()
    with sc.MemoryStream(shards=2, clock=clock) as stream:
        assert stream.put([], keys=[]).num_rows == 0
        assert_nothing_stored(stream, clock, 2)


# --------------------------------------------------------------------------
# a handler that raises


class Flaky:
    """Records every invocation; raises for the batches ``fails(batch)`` picks."""

    def __init__(self, clock: Any, fails: Any) -> None:
        self.clock = clock
        self.fails = fails
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.__name__ = "flaky"

    def __call__(self, batch: Any) -> None:
        seqs = batch.records.column("seq").to_pylist()
        call = {
            "shard": batch.shard,
            "lane": batch.lane,
            "seqs": seqs,
            "attempt": batch.attempt,
            "now": self.clock.now(),
            "keys": batch.records.column("key").to_pylist(),
        }
        failed = bool(self.fails(batch))
        call["ok"] = not failed
        with self.lock:
            self.calls.append(call)
        if failed:
            raise RuntimeError(f"boom {batch.shard}/{seqs[0]} attempt {batch.attempt}")

    def of(self, **match: Any) -> list[dict[str, Any]]:
        return [c for c in self.calls if all(c[k] == v for k, v in match.items())]


def two_shard_stream(clock: Any, per_shard: int = 8) -> tuple[Any, list[str], list[str]]:
    k0 = keys_in_shard(2, 0, per_shard, "a")
    k1 = keys_in_shard(2, 1, per_shard, "b")
    stream = sc.MemoryStream(shards=2, clock=clock)
    keys = [k for pair in zip(k0, k1, strict=True) for k in pair]
    stream.put(pa.table({"key": keys, "v": range(len(keys))}))
    return stream, k0, k1


def test_failed_batch_is_retried_while_other_shards_flow() -> None:
    clock = sc.VirtualClock()
    stream, _, _ = two_shard_stream(clock)
    fail_times = 3
    h = Flaky(clock, lambda b: b.shard == 0 and b.first_seq == 2 and b.attempt <= fail_times)
    with stream, sc.App(clock=clock) as app:
        app.consumer(stream, batch_size=2)(h)
        app.run(until_idle=True)
        metrics = app.metrics()
        cps = app.checkpoints()["flaky"]

    bad = h.of(shard=0, seqs=[2, 3])
    assert [c["attempt"] for c in bad] == [1, 2, 3, 4]
    assert [c["ok"] for c in bad] == [False, False, False, True]
    times = [c["now"] for c in bad]
    assert times == sorted(times) and times[-1] > times[0], "retries wait (back-off)"
    # the shard waits: no later batch of shard 0 before the retry succeeded
    i_success = h.calls.index(bad[-1])
    assert all(c["seqs"][0] <= 2 for c in h.calls[:i_success] if c["shard"] == 0)
    # the other shard flowed meanwhile, all of it before the successful retry
    shard1 = h.of(shard=1)
    assert sorted(s for c in shard1 for s in c["seqs"]) == list(range(8))
    assert all(c["attempt"] == 1 for c in shard1)
    assert max(c["now"] for c in shard1) < times[-1]
    # every record succeeded exactly once
    for shard in (0, 1):
        ok = sorted(s for c in h.of(shard=shard, ok=True) for s in c["seqs"])
        assert ok == list(range(8))
    assert cps == {0: 7, 1: 7}
    assert metrics["records_done"] == 16
    assert metrics["errors"] == fail_times
    assert metrics["retries"] == fail_times
    assert metrics["invocations"] == len(h.calls)


def test_failed_lane_waits_while_other_lanes_of_the_shard_flow() -> None:
    clock = sc.VirtualClock()
    keys = [f"k{i}" for i in range(40)]
    lanes = {k: lane_of(key_hash(k), 2) for k in keys}
    assert set(lanes.values()) == {0, 1}
    victim = next(k for k in keys if lanes[k] == 0)
    h = Flaky(clock, lambda b: victim in b.records.column("key").to_pylist() and b.attempt <= 2)
    with sc.MemoryStream(shards=1, clock=clock) as stream, sc.App(clock=clock) as app:
        stream.put(pa.table({"key": keys}))
        app.consumer(stream, batch_size=3, parallelization=2)(h)
        app.run(until_idle=True)
        assert app.checkpoints()["flaky"] == {0: 39}

    bad = [c for c in h.calls if victim in c["keys"]]
    assert [c["attempt"] for c in bad] == [1, 2, 3]
    assert all(c["seqs"] == bad[0]["seqs"] for c in bad)
    assert all(c["lane"] == 0 for c in bad)
    i_success = h.calls.index(bad[-1])
    # lane 0 does not move on before the retry succeeded
    assert all(c["seqs"][0] <= bad[0]["seqs"][0] for c in h.calls[:i_success] if c["lane"] == 0)
    # lane 1 finished before lane 0's successful retry
    lane1 = h.of(lane=1)
    assert sorted(s for c in lane1 for s in c["seqs"]) == sorted(
        i for i, k in enumerate(keys) if lanes[k] == 1
    )
    assert max(c["now"] for c in lane1) < bad[-1]["now"]
    ok = sorted(s for c in h.calls if c["ok"] for s in c["seqs"])
    assert ok == list(range(40))


def run_always_failing(seed: int, timeout: float) -> tuple[Flaky, Any, Any, float]:
    clock = sc.VirtualClock(start=START, seed=seed)
    stream, _, _ = two_shard_stream(clock)
    h = Flaky(clock, lambda b: b.shard == 0)
    with stream, sc.App(clock=clock) as app:
        app.consumer(stream, batch_size=3)(h)
        app.run(until_idle=False, timeout=timeout)
        metrics = app.metrics()
        cps = app.checkpoints()["flaky"]
        elapsed = clock.now() - START
    return h, metrics, cps, elapsed


def test_permanent_failure_blocks_only_its_shard_until_the_run_times_out() -> None:
    h, metrics, cps, elapsed = run_always_failing(seed=0, timeout=30.0)
    assert 30.0 <= elapsed < 90.0
    failing = h.of(shard=0)
    assert len(failing) >= 3
    assert all(c["seqs"] == [0, 1, 2] for c in failing), "the same batch, again and again"
    assert [c["attempt"] for c in failing] == list(range(1, len(failing) + 1))
    assert cps.get(0) is None
    assert cps[1] == 7
    assert metrics["errors"] == len(failing)
    # the retry scheduled after the last failure may or may not be counted yet
    assert metrics["retries"] in (len(failing) - 1, len(failing))


def test_retry_schedule_on_a_virtual_clock_repeats_exactly() -> None:
    a = run_always_failing(seed=7, timeout=60.0)[0]
    b = run_always_failing(seed=7, timeout=60.0)[0]
    assert [c["now"] for c in a.of(shard=0)] == [c["now"] for c in b.of(shard=0)]


# --------------------------------------------------------------------------
# the Batch


def test_batch_fields() -> None:
    clock = sc.VirtualClock(start=START)
    keys = [f"user-{i % 7}" for i in range(30)]
    table = pa.table({"user_id": keys, "amount": [float(i) for i in range(30)], "i": range(30)})
    shards, assigned = partition(keys, 3)
    seen: list[Any] = []
    lock = threading.Lock()
    with sc.MemoryStream(shards=3, name="clicks", clock=clock) as stream:
        clock.advance(1.5)
        stream.put(table, key="user_id")
        with sc.App(clock=clock) as app:

            @app.consumer(stream, batch_size=4, parallelization=3)
            def handle(batch: Any) -> None:
                with lock:
                    seen.append(batch)

            app.run(until_idle=True)
            cps = app.checkpoints()["handle"]
            for s, rows in shards.items():
                assert cps.get(s) == (len(rows) - 1 if rows else None)

    assert seen
    total = 0
    for batch in seen:
        assert isinstance(batch, sc.Batch)
        r = batch.records
        assert isinstance(r, pa.RecordBatch)
        assert batch.source == "clicks"
        assert batch.attempt == 1
        assert len(batch) == r.num_rows <= 4
        seqs = r.column("seq").to_pylist()
        assert (batch.first_seq, batch.last_seq) == (seqs[0], seqs[-1])
        assert seqs == sorted(seqs)
        assert r.schema.names == ["seq", "key", "arrival", "user_id", "amount", "i"]
        assert r.schema.field("seq").type == pa.uint64()
        assert r.schema.field("key").type == pa.string()
        assert r.schema.field("arrival").type == pa.timestamp("ms", tz="UTC")
        assert r.column("arrival").cast(pa.int64()).to_pylist() == [int((START + 1.5) * 1000)] * len(batch)
        assert r.column("key").to_pylist() == r.column("user_id").to_pylist()
        for k, i, seq in zip(r.column("key").to_pylist(), r.column("i").to_pylist(), seqs, strict=True):
            assert keys[i] == k
            assert assigned[i] == (batch.shard, seq)
            assert lane_of(key_hash(k), 3) == batch.lane
        total += len(batch)
    assert total == 30


def test_default_name_and_source_name() -> None:
    clock = sc.VirtualClock()
    sources: list[str] = []
    with sc.MemoryStream(shards=1, clock=clock) as stream, sc.App(clock=clock) as app:
        stream.put([b"a"], keys=["k"])

        @app.consumer(stream)
        def my_handler(batch: Any) -> None:
            sources.append(batch.source)

        app.run(until_idle=True)
        assert app.checkpoints() == {"my_handler": {0: 0}}
    assert sources == ["stream"]


# --------------------------------------------------------------------------
# a later put with other columns


SECOND_PUTS = {
    "reordered": pa.table({"s": ["z"], "key": ["c"], "v": [3]}),
    "extra_column": pa.table({"key": ["c"], "v": [3], "s": ["z"], "w": [1.0]}),
    "missing_column": pa.table({"key": ["c"], "v": [3]}),
    "other_type": pa.table({"key": ["c"], "v": pa.array([3], pa.int32()), "s": ["z"]}),
    "other_key_type": pa.table({"key": [b"c"], "v": [3], "s": ["z"]}),
}


@pytest.mark.parametrize("variant", list(SECOND_PUTS))
@pytest.mark.parametrize("batch_size", [1, 10])
def test_put_with_other_columns_is_rejected_or_delivered(variant: str, batch_size: int) -> None:
    """Unspecified which, but never a silent stall: the put raises ValueError and
    stores nothing, or every record is delivered."""
    clock = sc.VirtualClock()
    got: list[Any] = []
    with sc.MemoryStream(shards=1, clock=clock) as stream:
        stream.put(pa.table({"key": ["a", "b"], "v": [1, 2], "s": ["x", "y"]}))
        try:
            stream.put(SECOND_PUTS[variant])
            expected = [0, 1, 2]
        except ValueError:
            expected = [0, 1]
        with sc.App(clock=clock) as app:

            @app.consumer(stream, batch_size=batch_size)
            def handle(batch: Any) -> None:
                got.extend(batch.records.column("seq").to_pylist())

            app.run(until_idle=False, timeout=60.0)  # virtual seconds; returns even if stuck
    assert got == expected


# --------------------------------------------------------------------------
# checkpoints with lanes, starting positions


def test_shard_checkpoint_waits_for_the_slowest_lane() -> None:
    """SEMANTICS 0.3: the highest S such that every record with seq <= S is done."""
    clock = sc.VirtualClock()
    keys = [f"k{i}" for i in range(30)]
    lanes = [lane_of(key_hash(k), 2) for k in keys]
    # lane 0's second batch fails for ever; everything else succeeds
    lane0 = [i for i, lane in enumerate(lanes) if lane == 0]
    stuck = lane0[3:6]
    h = Flaky(clock, lambda b: b.lane == 0 and b.first_seq == stuck[0])
    with sc.MemoryStream(shards=1, clock=clock) as stream, sc.App(clock=clock) as app:
        stream.put(pa.table({"key": keys}))
        app.consumer(stream, batch_size=3, parallelization=2)(h)
        app.run(until_idle=False, timeout=20.0)
        cp = app.checkpoints()["flaky"].get(0)
    done = {s for c in h.calls if c["ok"] for s in c["seqs"]}
    assert done == set(range(30)) - {i for i in lane0 if i >= stuck[0]}
    assert cp == stuck[0] - 1
    assert all(c["seqs"] == stuck for c in h.calls if c["lane"] == 0 and not c["ok"])


def test_latest_starts_at_the_end_of_the_stream_when_the_consumer_is_added() -> None:
    clock = sc.VirtualClock()
    with sc.MemoryStream(shards=3, clock=clock) as stream:
        stream.put(pa.table({"key": [f"old{i}" for i in range(20)]}))
        got: list[str] = []
        with sc.App(clock=clock) as app:

            @app.consumer(stream, starting_position="LATEST")
            def handle(batch: Any) -> None:
                got.extend(batch.records.column("key").to_pylist())

            stream.put(pa.table({"key": [f"new{i}" for i in range(20)]}))
            app.run(until_idle=True)
    assert sorted(got) == sorted(f"new{i}" for i in range(20))


def test_at_sequence_starts_at_that_seq() -> None:
    clock = sc.VirtualClock()
    keys = keys_in_shard(2, 0, 10, "a") + keys_in_shard(2, 1, 10, "b")
    with sc.MemoryStream(shards=2, clock=clock) as stream:
        stream.put(pa.table({"key": keys}))
        got = collect(stream, clock, starting_position="AT_SEQUENCE", starting_sequence={0: 4, 1: 9})
    seqs = sorted(
        (s, q)
        for b in got
        for s, q in zip(
            [shard_of(key_hash(k), 2) for k in b.column("key").to_pylist()],
            b.column("seq").to_pylist(),
            strict=True,
        )
    )
    assert seqs == [(0, q) for q in range(4, 10)] + [(1, 9)]


@pytest.mark.parametrize(
    "at", [START + 5.0, datetime.fromtimestamp(START + 5.0, tz=timezone.utc)], ids=["epoch", "dt"]
)
def test_at_timestamp_starts_at_the_first_record_that_arrived_then(at: Any) -> None:
    clock = sc.VirtualClock(start=START)
    with sc.MemoryStream(shards=2, clock=clock) as stream:
        stream.put(pa.table({"key": [f"a{i}" for i in range(10)]}))
        clock.advance(10.0)
        stream.put(pa.table({"key": [f"b{i}" for i in range(10)]}))
        clock.advance(10.0)
        got = collect(stream, clock, starting_position="AT_TIMESTAMP", starting_timestamp=at)
    assert rows_of(got, "key") == sorted(f"b{i}" for i in range(10))


def test_run_resumes_a_pending_retry_where_it_stopped() -> None:
    clock = sc.VirtualClock()
    stream, _, _ = two_shard_stream(clock)
    h = Flaky(clock, lambda b: b.shard == 0 and b.first_seq == 0 and b.attempt <= 5)
    with stream, sc.App(clock=clock) as app:
        app.consumer(stream, batch_size=4)(h)
        app.run(until_idle=False, timeout=1.0)
        first = len(h.of(shard=0))
        assert 1 <= first < 6
        assert app.checkpoints()["flaky"].get(0) is None
        assert app.checkpoints()["flaky"][1] == 7
        app.run(until_idle=True)
        assert app.checkpoints()["flaky"] == {0: 7, 1: 7}
    bad = h.of(shard=0, seqs=[0, 1, 2, 3])
    assert [c["attempt"] for c in bad] == [1, 2, 3, 4, 5, 6]
    assert [c["ok"] for c in bad] == [False] * 5 + [True]
    ok = sorted((c["shard"], s) for c in h.calls if c["ok"] for s in c["seqs"])
    assert ok == [(shard, s) for shard in (0, 1) for s in range(8)]


VIEW_INPUTS = {
    "string_view_key": pa.table({"key": pa.array(["a", "b", "c", "d"], pa.string_view())}),
    "binary_view_key": pa.table({"key": pa.array([b"a", b"b", b"c", b"d"], pa.binary_view())}),
    "string_view_payload": pa.table(
        {"key": ["a", "b", "c", "d"], "p": pa.array(["w", "x", "y", "z"], pa.string_view())}
    ),
}


@pytest.mark.parametrize("form", list(VIEW_INPUTS))
def test_view_types_are_stored_or_rejected_with_a_value_error(form: str) -> None:
    """Arrow view types: not promised by API.md, so either works, but a put fails only
    with ValueError (never another exception) and stores nothing when it does."""
    clock = sc.VirtualClock()
    with sc.MemoryStream(shards=3, clock=clock) as stream:
        try:
            res = stream.put(VIEW_INPUTS[form])
        except ValueError:
            assert_nothing_stored(stream, clock, 3)
            return
        assert res.num_rows == 4
        assert sum(b.num_rows for b in collect(stream, clock)) == 4
