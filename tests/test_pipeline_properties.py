"""Property tests of the stream pipeline against the pure-Python model.

Everything runs on ``sc.VirtualClock`` through the public API only
(``import streamcore as sc``) and is compared with ``tests/reference.py``:
partitioning and sequence numbers (SEMANTICS 0.3), batching (2.2), lanes and
ordering (2.3), checkpoints (API.md) and metrics.
"""

from __future__ import annotations

import decimal
import itertools
import os
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_BATCH_BYTES,
    TWO64,
    ReferenceStream,
    expected_batches,
    final_checkpoints,
    key_hash,
    lane_of,
    partition,
    shard_of,
    shard_start,
)

import streamcore as sc

# STREAMCORE_TEST_EXAMPLES=1000 for a longer soak
EXAMPLES = int(os.environ.get("STREAMCORE_TEST_EXAMPLES", "100"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEW = settings(SETTINGS, max_examples=max(1, EXAMPLES // 2))

START = 1_700_000_000.0


# --------------------------------------------------------------------------
# input generation

KEY_KINDS = ("str", "int", "bytes")
KEY_TYPES = {"str": pa.string(), "int": pa.int64(), "bytes": pa.binary()}
SPECIAL_KEYS: dict[str, list[Any]] = {
    "str": ["", "a", "key", "ü", "日本", "🙂🙂", "a" * 40],
    "int": [0, 1, -1, 2**63 - 1, -(2**63), 42, 2**32],
    "bytes": [b"", b"\x00", b"\xff" * 8, b"a", bytes(range(20))],
}
TEXT = "abcxyz é🙂"
SIZES = [0, 0, 1, 3, 10, 40, 120, 400]


def random_key(rng: random.Random, kind: str) -> Any:
    if rng.random() < 0.15:
        return rng.choice(SPECIAL_KEYS[kind])
    if kind == "str":
        return "".join(rng.choice(TEXT) for _ in range(rng.randint(0, 10)))
    if kind == "int":
        if rng.random() < 0.5:
            return rng.randint(-(2**63), 2**63 - 1)
        return rng.randint(-50, 50)
    return rng.randbytes(rng.randint(0, 10))


def random_size(rng: random.Random) -> int:
    return 2500 if rng.random() < 0.02 else rng.choice(SIZES)


def random_text(rng: random.Random) -> str:
    return "".join(rng.choice(TEXT) for _ in range(random_size(rng)))


def _nullable(gen: Any) -> Any:
    def g(rng: random.Random, nulls: bool) -> Any:
        return None if nulls and rng.random() < 0.2 else gen(rng)

    return g


# name -> (type, value generator(rng, nulls allowed), usable in list-of-dicts input)
PAYLOAD_COLUMNS: dict[str, tuple[pa.DataType, Any, bool]] = {
    "n": (pa.int64(), lambda rng, nulls: rng.randint(-(10**12), 10**12), True),
    "x": (pa.float64(), _nullable(lambda rng: rng.uniform(-1e6, 1e6)), True),
    "s": (pa.string(), _nullable(random_text), True),
    "ok": (pa.bool_(), _nullable(lambda rng: rng.random() < 0.5), True),
    "blob": (pa.binary(), _nullable(lambda rng: rng.randbytes(random_size(rng))), True),
    "big": (pa.large_string(), _nullable(random_text), False),
    "i32": (pa.int32(), _nullable(lambda rng: rng.randint(-(2**31), 2**31 - 1)), False),
    "when": (pa.timestamp("ms"), _nullable(lambda rng: rng.randint(0, 2**40)), False),
    "i8": (pa.int8(), _nullable(lambda rng: rng.randint(-128, 127)), False),
    "fsb": (pa.binary(5), _nullable(lambda rng: rng.randbytes(5)), False),
    "dec": (pa.decimal128(12, 2), _nullable(lambda rng: decimal.Decimal(rng.randint(0, 10**9)) / 100), False),
}


class CapsuleOnly:
    """An object that only exports the Arrow PyCapsule stream interface."""

    def __init__(self, table: pa.Table) -> None:
        self._table = table

    def __arrow_c_stream__(self, requested_schema: object = None) -> object:
        return self._table.__arrow_c_stream__(requested_schema)


@dataclass
class PutSpec:
    data: Any
    key: str | None  # None: do not pass key= (the default "key")
    keys: list[Any] | None
    advance: float  # seconds the clock moves before this put
    n_rows: int

    def apply(self, stream: Any) -> pa.Table:
        if self.keys is not None:
            return stream.put(self.data, keys=self.keys)
        if self.key is None:
            return stream.put(self.data)
        return stream.put(self.data, key=self.key)

    def apply_model(self, model: ReferenceStream) -> list[tuple[int, int]]:
        return model.put(self.data, key=self.key or "key", keys=self.keys)


@dataclass
class StreamSpec:
    n_shards: int
    mode: str
    key_kind: str
    puts: list[PutSpec]

    def __repr__(self) -> str:  # keep hypothesis' falsifying example readable
        rows = [p.n_rows for p in self.puts]
        return (
            f"StreamSpec(n_shards={self.n_shards}, mode={self.mode!r}, "
            f"key_kind={self.key_kind!r}, rows={rows})"
        )


def build_put(
    rng: random.Random,
    mode: str,
    key_kind: str,
    key_name: str,
    pool: list[Any] | None,
    columns: list[str],
    key_position: int,
    n_rows: int,
    advance: float,
) -> PutSpec:
    """One put. Every put of a stream has the same columns in the same order."""
    keys = [rng.choice(pool) if pool else random_key(rng, key_kind) for _ in range(n_rows)]
    if mode == "bytes":
        payloads = [rng.randbytes(random_size(rng)) for _ in range(n_rows)]
        return PutSpec(payloads, None, keys, advance, n_rows)
    nulls = mode != "dicts"
    values = {c: [PAYLOAD_COLUMNS[c][1](rng, nulls) for _ in range(n_rows)] for c in columns}
    passed_key = None if key_name == "key" and rng.random() < 0.5 else key_name
    order = [*columns]
    order.insert(key_position, key_name)
    if mode == "dicts":
        rows = [{c: (keys[i] if c == key_name else values[c][i]) for c in order} for i in range(n_rows)]
        return PutSpec(rows, passed_key, None, advance, n_rows)
    # Sometimes the rows are a slice of a longer table (arrays with an offset; the
    # padding may hold null keys, which are not part of the put) and/or chunked.
    front = rng.choice([0, 0, 1, 3])
    back = rng.choice([0, 0, 2])
    for c in columns:
        gen = PAYLOAD_COLUMNS[c][1]
        values[c] = (
            [gen(rng, nulls) for _ in range(front)] + values[c] + [gen(rng, nulls) for _ in range(back)]
        )
    pad = [None if rng.random() < 0.5 else random_key(rng, key_kind) for _ in range(front + back)]
    all_keys = pad[:front] + keys + pad[front:]
    arrays = {c: pa.array(values[c], PAYLOAD_COLUMNS[c][0]) for c in columns}
    arrays[key_name] = pa.array(all_keys, KEY_TYPES[key_kind])
    table = pa.table({c: arrays[c] for c in order}).slice(front, n_rows)
    if n_rows > 1 and rng.random() < 0.3:
        cuts = sorted({0, n_rows, *(rng.randint(1, n_rows - 1) for _ in range(2))})
        table = pa.concat_tables([table.slice(a, b - a) for a, b in itertools.pairwise(cuts)])
    data: Any = table
    if mode == "record_batch":
        data = pa.record_batch([table.column(c).combine_chunks() for c in order], names=order)
    elif mode == "capsule":
        data = CapsuleOnly(table)
    return PutSpec(data, passed_key, None, advance, n_rows)


@st.composite
def stream_specs(draw: Any, max_puts: int = 4, max_rows: int = 50) -> StreamSpec:
    n_shards = draw(st.one_of(st.integers(1, 4), st.integers(1, 16)))
    key_kind = draw(st.sampled_from(KEY_KINDS))
    mode = draw(st.sampled_from(["table", "table", "record_batch", "capsule", "dicts", "bytes"]))
    key_name = draw(st.sampled_from(["key", "user_id"]))
    low_cardinality = draw(st.booleans())
    allowed = [c for c, (_, _, in_dicts) in PAYLOAD_COLUMNS.items() if in_dicts or mode != "dicts"]
    columns = draw(st.lists(st.sampled_from(allowed), max_size=4, unique=True))
    key_position = draw(st.integers(0, len(columns)))
    min_rows = 1 if mode in ("dicts", "bytes") else 0
    sizes = draw(st.lists(st.integers(min_rows, max_rows), min_size=1, max_size=max_puts))
    advances = draw(st.lists(st.sampled_from([0.0, 0.5, 1.5]), min_size=len(sizes), max_size=len(sizes)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = random.Random(seed)
    pool = None
    if low_cardinality:
        pool = list({repr(k): k for k in (random_key(rng, key_kind) for _ in range(5))}.values())
        pool = pool[: rng.randint(1, len(pool))]
    puts = [
        build_put(rng, mode, key_kind, key_name, pool, columns, key_position, n, adv)
        for n, adv in zip(sizes, advances, strict=True)
    ]
    return StreamSpec(n_shards, mode, key_kind, puts)


@dataclass
class ConsumerSpec:
    batch_size: int | None
    max_batch_bytes: int | None
    parallelization: int | None
    batch_window: float | None
    max_delay: float
    delay_seed: int

    def kwargs(self) -> dict[str, Any]:
        opts = {
            "batch_size": self.batch_size,
            "max_batch_bytes": self.max_batch_bytes,
            "parallelization": self.parallelization,
            "batch_window": self.batch_window,
        }
        return {k: v for k, v in opts.items() if v is not None}

    @property
    def size(self) -> int:
        return DEFAULT_BATCH_SIZE if self.batch_size is None else self.batch_size

    @property
    def nbytes(self) -> int:
        return DEFAULT_MAX_BATCH_BYTES if self.max_batch_bytes is None else self.max_batch_bytes

    @property
    def pf(self) -> int:
        return 1 if self.parallelization is None else self.parallelization

    def delay_for(self, shard: int, first_seq: int) -> float:
        """Deterministic handler run time for one batch, in whole milliseconds."""
        if not self.max_delay:
            return 0.0
        h = xxhash.xxh64_intdigest(f"{self.delay_seed}:{shard}:{first_seq}".encode())
        return round((h % 1001) / 1000 * self.max_delay, 3)


@st.composite
def consumer_specs(draw: Any) -> ConsumerSpec:
    return ConsumerSpec(
        batch_size=draw(st.one_of(st.integers(1, 50), st.sampled_from([None, 7, 100, 10000]))),
        max_batch_bytes=draw(st.one_of(st.integers(64, 2000), st.just(None))),
        parallelization=draw(st.one_of(st.sampled_from([None, 1]), st.integers(1, 10))),
        batch_window=draw(st.sampled_from([None, 0.0, 0.0, 0.5, 2.0])),
        max_delay=draw(st.sampled_from([0.0, 0.0, 0.01, 1.0, 3.0])),
        delay_seed=draw(st.integers(0, 2**16)),
    )


# --------------------------------------------------------------------------
# recording handlers


@dataclass
class Delivery:
    shard: int
    lane: int
    attempt: int
    first_seq: int
    last_seq: int
    length: int
    source: str
    schema: pa.Schema
    columns: dict[str, list[Any]]
    arrival_ms: list[int]
    now: float

    @property
    def seqs(self) -> list[int]:
        return self.columns["seq"]


@dataclass
class Recorder:
    name: str
    spec: ConsumerSpec
    clock: Any
    log: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, batch: Any) -> None:
        records = batch.records
        d = Delivery(
            shard=batch.shard,
            lane=batch.lane,
            attempt=batch.attempt,
            first_seq=batch.first_seq,
            last_seq=batch.last_seq,
            length=len(batch),
            source=batch.source,
            schema=records.schema,
            columns=records.to_pydict(),
            arrival_ms=records.column("arrival").cast(pa.int64()).to_pylist(),
            now=self.clock.now(),
        )
        with self.lock:
            self.log.append(d)
        delay = self.spec.delay_for(batch.shard, batch.first_seq)
        if delay:
            self.clock.sleep(delay)

    def register(self, app: Any, stream: Any) -> None:
        self.__name__ = self.name
        app.consumer(stream, name=self.name, **self.spec.kwargs())(self)


# --------------------------------------------------------------------------
# checks


def check_put_result(res: Any, expected: list[tuple[int, int]]) -> None:
    assert isinstance(res, pa.Table)
    assert res.num_rows == len(expected)
    assert res.schema.field("shard").type == pa.int64()
    assert res.schema.field("seq").type == pa.uint64()
    got = list(zip(res.column("shard").to_pylist(), res.column("seq").to_pylist(), strict=True))
    assert got == expected


def check_deliveries(
    model: ReferenceStream,
    rec: Recorder,
    put_ms: list[int],
    stream_name: str = "stream",
) -> None:
    """Exactly once, shard and lane of every record, batch limits, record contents."""
    by_seq = model.by_shard_seq()
    schema = model.stored_schema()
    pf, n = rec.spec.pf, model.n_shards
    seen: Counter[tuple[int, int]] = Counter()
    for d in rec.log:
        seqs = d.seqs
        assert d.attempt == 1, "no handler failed, so no retry is expected"
        assert d.source == stream_name
        assert d.length == len(seqs) >= 1
        assert (d.first_seq, d.last_seq) == (seqs[0], seqs[-1])
        assert 0 <= d.lane < pf
        assert len(seqs) <= rec.spec.size, f"batch of {len(seqs)} > batch_size {rec.spec.size}"
        unknown = [s for s in seqs if (d.shard, s) not in by_seq]
        assert not unknown, f"shard {d.shard} delivered seqs that were never put: {unknown}"
        refs = [by_seq[(d.shard, s)] for s in seqs]
        nbytes = sum(r.nbytes for r in refs)
        assert len(seqs) == 1 or nbytes <= rec.spec.nbytes, (
            f"batch {d.shard}/{d.lane} {seqs} has {nbytes} bytes > {rec.spec.nbytes}"
        )
        assert schema is not None
        names, types = schema
        assert d.schema.names == names
        assert [f.type for f in d.schema] == types
        for i, r in enumerate(refs):
            assert d.columns["key"][i] == r.key
            assert shard_of(r.hash, n) == d.shard
            assert lane_of(r.hash, pf) == d.lane, (
                f"seq {r.seq} of shard {d.shard}: lane {d.lane}, expected {lane_of(r.hash, pf)}"
            )
            payload = tuple(d.columns[c][i] for c in names[3:])
            assert payload == r.payload, f"payload of {d.shard}/{r.seq}"
            assert d.arrival_ms[i] == put_ms[r.put_index]
            seen[(d.shard, r.seq)] += 1
    dupes = {k: c for k, c in seen.items() if c > 1}
    assert not dupes, f"delivered more than once: {dupes}"
    missing = set(by_seq) - set(seen)
    assert not missing, f"never delivered: {sorted(missing)[:20]}"


def check_key_order(rec: Recorder) -> None:
    last: dict[tuple[int, Any], int] = {}
    for d in rec.log:
        for s, k in zip(d.seqs, d.columns["key"], strict=True):
            kk = (d.shard, k)
            assert kk not in last or last[kk] < s, f"key {k!r}: seq {s} after {last[kk]}"
            last[kk] = s


def check_shard_order(model: ReferenceStream, rec: Recorder) -> None:
    per_shard: dict[int, list[int]] = {s: [] for s in range(model.n_shards)}
    for d in rec.log:
        per_shard[d.shard].extend(d.seqs)
    for s in range(model.n_shards):
        assert per_shard[s] == [r.seq for r in model.records[s]], f"shard {s} out of order"


def observed_batches(rec: Recorder) -> dict[tuple[int, int], list[list[int]]]:
    out: dict[tuple[int, int], list[list[int]]] = {}
    for d in rec.log:
        out.setdefault((d.shard, d.lane), []).append(list(d.seqs))
    return out


def check_checkpoints(app: Any, model: ReferenceStream, name: str) -> dict[int, int | None]:
    cps = app.checkpoints()[name]
    expected = final_checkpoints(model.records)
    got = {s: cps.get(s) for s in range(model.n_shards)}
    assert got == expected
    return got


def do_puts(stream: Any, model: ReferenceStream, clock: Any, puts: list[PutSpec]) -> list[int]:
    put_ms = []
    for p in puts:
        if p.advance:
            clock.advance(p.advance)
        put_ms.append(int(clock.now() * 1000))
        check_put_result(p.apply(stream), p.apply_model(model))
    return put_ms


# --------------------------------------------------------------------------
# the model itself


def test_reference_shard_ranges_use_floor_boundaries() -> None:
    for n in (1, 2, 3, 5, 7, 16):
        assert shard_of(0, n) == 0
        assert shard_of(TWO64 - 1, n) == n - 1
        for i in range(1, n):
            b = shard_start(i, n)
            assert shard_of(b, n) == i
            assert shard_of(b - 1, n) == i - 1
    # (h * N) >> 64 would put floor(2**64 / 3) into shard 0
    assert shard_of(TWO64 // 3, 3) == 1
    assert (TWO64 // 3 * 3) >> 64 == 0


def test_reference_key_hash_encodings() -> None:
    assert key_hash("ü") == xxhash.xxh64_intdigest("ü".encode())
    assert key_hash(b"\x00") == xxhash.xxh64_intdigest(b"\x00")
    assert key_hash(-1) == xxhash.xxh64_intdigest(b"\xff" * 8)
    assert key_hash(2**64 - 1) == key_hash(-1)
    assert key_hash(2**63) == key_hash(-(2**63))


# --------------------------------------------------------------------------
# properties


@SETTINGS
@given(
    spec=stream_specs(),
    consumers=st.lists(consumer_specs(), min_size=1, max_size=3),
    concurrency=st.sampled_from([None, None, 1, 2, 3]),
)
def test_batches_match_model_when_everything_is_put_before_run(
    spec: StreamSpec, consumers: list[ConsumerSpec], concurrency: int | None
) -> None:
    clock = sc.VirtualClock()
    model = ReferenceStream(spec.n_shards)
    app_opts = {} if concurrency is None else {"concurrency": concurrency}
    with sc.MemoryStream(shards=spec.n_shards, clock=clock) as stream:
        assert list(stream.shard_ids) == list(range(spec.n_shards))
        put_ms = do_puts(stream, model, clock, spec.puts)
        with sc.App(clock=clock, **app_opts) as app:
            recorders = [Recorder(f"c{i}", c, clock) for i, c in enumerate(consumers)]
            for r in recorders:
                r.register(app, stream)
            app.run(until_idle=True)

            total_batches = 0
            for r in recorders:
                check_deliveries(model, r, put_ms)
                check_key_order(r)
                if r.spec.pf == 1:
                    check_shard_order(model, r)
                want = expected_batches(model.records, r.spec.pf, r.spec.size, r.spec.nbytes)
                assert observed_batches(r) == want
                check_checkpoints(app, model, r.name)
                total_batches += len(r.log)

            metrics = app.metrics()
            assert metrics["records_done"] == len(model) * len(recorders)
            assert metrics["invocations"] == total_batches
            assert metrics["errors"] == 0
            for r in recorders:
                assert metrics[f"{r.name}.records_done"] == len(model)
                assert metrics[f"{r.name}.invocations"] == len(r.log)


@SETTINGS
@given(spec=stream_specs(max_puts=5, max_rows=30), cspec=consumer_specs(), early=st.booleans())
def test_interleaved_puts_and_runs_deliver_everything_once(
    spec: StreamSpec, cspec: ConsumerSpec, early: bool
) -> None:
    clock = sc.VirtualClock()
    model = ReferenceStream(spec.n_shards)
    rec = Recorder("handle", cspec, clock)
    want: dict[tuple[int, int], list[list[int]]] = {}
    put_ms: list[int] = []
    with (
        sc.MemoryStream(shards=spec.n_shards, clock=clock) as stream,
        sc.App(clock=clock) as app,
    ):
        if early:
            rec.register(app, stream)
        previous: dict[int, int | None] = {s: None for s in range(spec.n_shards)}
        for i, p in enumerate(spec.puts):
            put_ms += do_puts(stream, model, clock, [p])
            if i == 0 and not early:
                rec.register(app, stream)
            app.run(until_idle=True)

            check_deliveries(model, rec, put_ms)
            cps = check_checkpoints(app, model, rec.name)
            for s, cp in cps.items():
                prev = previous[s]
                assert prev is None or (cp is not None and cp >= prev), "checkpoint went back"
            previous = cps
            phase = {s: [r for r in recs if r.put_index == i] for s, recs in model.records.items()}
            for lane, batches in expected_batches(phase, cspec.pf, cspec.size, cspec.nbytes).items():
                want.setdefault(lane, []).extend(batches)
        check_key_order(rec)
        if cspec.pf == 1:
            check_shard_order(model, rec)
        assert observed_batches(rec) == want
        assert app.metrics()["records_done"] == len(model)
        assert app.metrics()["invocations"] == len(rec.log)


KEY_STRATEGIES: dict[str, Any] = {
    "str": st.text(max_size=8),
    "bytes": st.binary(max_size=8),
    "int": st.integers(-(2**63), 2**63 - 1),
}


@FEW
@given(
    n_shards=st.integers(1, 16),
    kind_keys=st.sampled_from(KEY_KINDS).flatmap(
        lambda kind: st.tuples(st.just(kind), st.lists(KEY_STRATEGIES[kind], max_size=40))
    ),
)
def test_put_result_matches_partition(n_shards: int, kind_keys: tuple[str, list[Any]]) -> None:
    kind, keys = kind_keys
    rows, assigned = partition(keys, n_shards)
    with sc.MemoryStream(shards=n_shards, clock=sc.VirtualClock()) as stream:
        res = stream.put(pa.table({"key": pa.array(keys, KEY_TYPES[kind])}))
        check_put_result(res, assigned)
        # a second put continues every shard's sequence
        res2 = stream.put(pa.table({"key": pa.array(keys, KEY_TYPES[kind])}))
        counts = {s: len(r) for s, r in rows.items()}
        check_put_result(res2, [(s, q + counts[s]) for s, q in assigned])


# --------------------------------------------------------------------------
# examples


def run_collect(stream: Any, clock: Any, **opts: Any) -> Recorder:
    rec = Recorder("handle", ConsumerSpec(None, None, None, None, 0.0, 0), clock)
    with sc.App(clock=clock) as app:
        app.consumer(stream, name=rec.name, **opts)(rec)
        app.run(until_idle=True)
    return rec


def test_uint64_keys_hash_as_their_eight_bytes() -> None:
    clock = sc.VirtualClock()
    keys = [0, 5, 2**63 - 1, 2**63, 2**64 - 1, 12345678901234567890]
    model = ReferenceStream(7)
    table = pa.table({"key": pa.array(keys, pa.uint64()), "v": pa.array(range(len(keys)))})
    with sc.MemoryStream(shards=7, clock=clock) as stream:
        check_put_result(stream.put(table), model.put(table))
        rec = run_collect(stream, clock, parallelization=3)
    got = {(d.shard, s): k for d in rec.log for s, k in zip(d.seqs, d.columns["key"], strict=True)}
    assert got == {(r.shard, r.seq): r.key for r in model.all_records()}
    for d in rec.log:
        for k in d.columns["key"]:
            assert lane_of(key_hash(k), 3) == d.lane


def test_every_input_form_partitions_the_same() -> None:
    keys = [f"user-{i % 13}" for i in range(60)]
    values = list(range(60))
    table = pa.table({"user_id": keys, "v": values})
    forms = {
        "table": table,
        "record_batch": table.to_batches()[0],
        "capsule": CapsuleOnly(table),
        "dicts": [{"user_id": k, "v": v} for k, v in zip(keys, values, strict=True)],
    }
    _, expected = partition(keys, 5)
    for form, data in forms.items():
        with sc.MemoryStream(shards=5, clock=sc.VirtualClock()) as stream:
            res = stream.put(data, key="user_id")
            assert list(zip(res["shard"].to_pylist(), res["seq"].to_pylist(), strict=True)) == (expected), (
                form
            )


def test_key_column_named_otherwise_is_stored_twice() -> None:
    clock = sc.VirtualClock()
    table = pa.table({"v": [1, 2, 3], "user_id": ["a", "b", "a"]})
    with sc.MemoryStream(shards=1, clock=clock) as stream:
        stream.put(table, key="user_id")
        rec = run_collect(stream, clock)
    (d,) = rec.log
    assert d.schema.names == ["seq", "key", "arrival", "v", "user_id"]
    assert d.columns["key"] == d.columns["user_id"] == ["a", "b", "a"]


def test_bytes_payloads_are_stored_in_data() -> None:
    clock = sc.VirtualClock()
    payloads = [b"x", b"", "héllo", b"\x00\x01"]
    with sc.MemoryStream(shards=2, clock=clock) as stream:
        res = stream.put(payloads, keys=["a", "b", "c", "a"])
        assert res.num_rows == 4
        rec = run_collect(stream, clock)
    got = {}
    for d in rec.log:
        assert d.schema.names == ["seq", "key", "arrival", "data"]
        assert d.schema.field("data").type == pa.binary()
        for k, v in zip(d.columns["key"], d.columns["data"], strict=True):
            got.setdefault(k, []).append(v)
    assert got == {"a": [b"x", b"\x00\x01"], "b": [b""], "c": ["héllo".encode()]}


def test_several_consumers_each_get_every_record() -> None:
    clock = sc.VirtualClock()
    keys = [f"k{i}" for i in range(200)]
    with sc.MemoryStream(shards=4, clock=clock) as stream, sc.App(clock=clock) as app:
        stream.put(pa.table({"key": keys}))
        recs = [
            Recorder(f"c{i}", ConsumerSpec(7 * i + 1, None, i + 1, None, 0.0, 0), clock) for i in range(3)
        ]
        for r in recs:
            r.register(app, stream)
        app.run(until_idle=True)
        for r in recs:
            assert sorted(k for d in r.log for k in d.columns["key"]) == sorted(keys)
        cps = app.checkpoints()
        assert set(cps) >= {"c0", "c1", "c2"}
        assert cps["c0"] == cps["c1"] == cps["c2"]


@pytest.mark.parametrize("pf", [1, 4])
def test_handler_time_does_not_reorder_keys(pf: int) -> None:
    """Handlers that take (virtual) time: lanes overlap, order per key holds."""
    clock = sc.VirtualClock()
    keys = [f"k{i % 9}" for i in range(300)]
    spec = ConsumerSpec(5, None, pf, None, 2.0, 1)
    rec = Recorder("handle", spec, clock)
    with sc.MemoryStream(shards=2, clock=clock) as stream, sc.App(clock=clock) as app:
        stream.put(pa.table({"key": keys, "i": range(300)}))
        rec.register(app, stream)
        app.run(until_idle=True)
    check_key_order(rec)
    assert sorted(i for d in rec.log for i in d.columns["i"]) == list(range(300))
    assert clock.now() > START, "handlers slept on the virtual clock"


@pytest.mark.parametrize("trial", range(6))
def test_records_put_by_a_handler_during_the_run_are_consumed(trial: int) -> None:
    """run(until_idle=True) returns only when no work is left, including records
    that a handler put into another stream while the run went on."""
    clock = sc.VirtualClock()
    got: list[int] = []
    lock = threading.Lock()
    with (
        sc.MemoryStream(shards=3, name="s1", clock=clock) as s1,
        sc.MemoryStream(shards=2, name="s2", clock=clock) as s2,
        sc.App(clock=clock) as app,
    ):
        s1.put(pa.table({"key": [f"k{i}" for i in range(150)], "i": range(150)}))

        @app.consumer(s1, batch_size=trial + 1, parallelization=trial % 3 + 1)
        def forward(batch: Any) -> None:
            if trial % 2:
                clock.sleep(0.25 * trial)
            s2.put(batch.records.select(["key", "i"]))

        @app.consumer(s2, batch_size=13, batch_window=[0.0, 1.0, 3.0][trial % 3])
        def sink(batch: Any) -> None:
            with lock:
                got.extend(batch.records.column("i").to_pylist())

        app.run(until_idle=True)
        assert sorted(got) == list(range(150))
        assert app.metrics()["sink.records_done"] == 150


def test_a_stream_without_a_clock_uses_the_apps_clock() -> None:
    clock = sc.VirtualClock(start=START)
    arrivals: list[int] = []
    with sc.MemoryStream(shards=1) as stream, sc.App(clock=clock) as app:

        @app.consumer(stream)
        def handle(batch: Any) -> None:
            arrivals.extend(batch.records.column("arrival").cast(pa.int64()).to_pylist())

        clock.advance(2.5)
        stream.put(pa.table({"key": ["a", "b"]}))
        app.run(until_idle=True)
    assert arrivals == [int((START + 2.5) * 1000)] * 2


def test_system_clock_end_to_end() -> None:
    got: list[int] = []
    lock = threading.Lock()
    with sc.MemoryStream(shards=2) as stream, sc.App() as app:
        stream.put(pa.table({"key": [f"k{i}" for i in range(50)], "i": range(50)}))

        @app.consumer(stream, batch_size=8, batch_window=0.05, parallelization=2)
        def handle(batch: Any) -> None:
            with lock:
                got.extend(batch.records.column("i").to_pylist())

        app.run(until_idle=True)
    assert sorted(got) == list(range(50))


@pytest.mark.parametrize("slack", [-1, 0, 1])
def test_max_batch_bytes_boundary_is_inclusive(slack: int) -> None:
    clock = sc.VirtualClock()
    table = pa.table({"key": ["k"] * 9, "s": [f"{'x' * (i * 7)}" for i in range(9)]})
    model = ReferenceStream(1)
    model.put(table)
    sizes = [r.nbytes for r in model.records[0]]
    limit = sum(sizes[:3]) + slack
    with sc.MemoryStream(shards=1, clock=clock) as stream:
        stream.put(table)
        rec = run_collect(stream, clock, max_batch_bytes=limit, batch_size=1000)
    want = expected_batches(model.records, 1, 1000, limit)
    assert observed_batches(rec) == want
    assert len(want[(0, 0)][0]) == (2 if slack < 0 else 3)


def test_a_record_over_the_default_limit_goes_alone() -> None:
    clock = sc.VirtualClock()
    big = b"x" * (DEFAULT_MAX_BATCH_BYTES + 1)
    with sc.MemoryStream(shards=1, clock=clock) as stream:
        stream.put([b"a", big, b"b", b"c"], keys=["k"] * 4)
        rec = run_collect(stream, clock)
    assert [d.seqs for d in rec.log] == [[0], [1], [2, 3]]
