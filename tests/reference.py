"""A slow, obviously correct pure-Python model of streamcore's stream semantics.

The tests check the native core against this model. Nothing here imports
streamcore: the model reads its inputs with pyarrow, hashes keys with the
``xxhash`` package and does everything else with plain Python integers and
lists, so that each rule of SEMANTICS.md / API.md can be read off the code.

What the model covers (SEMANTICS 0.3, 2.1-2.3; API.md "Sources"):

* ``key_hash``: XXH64, seed 0, over the key's bytes (utf8 as stored, binary as
  is, integers as 8-byte little-endian int64; uint64 values >= 2**63 use the
  same 8 bytes read as unsigned).
* ``shard_of``: shard i of N owns [floor(i * 2**64 / N), floor((i+1) * 2**64 / N)).
* ``ReferenceStream.put``: per-shard sequence numbers from 0, one per record,
  in input order, across successive puts.
* ``row_nbytes``: the byte size of a stored record that ``max_batch_bytes``
  counts.
* ``expected_batches``: the batches a consumer makes when every record is in
  the stream before it runs.
* ``checkpoint`` / ``final_checkpoints``: the highest S such that every
  record with seq <= S is done.

and the failure policy (SEMANTICS 0.1, 0.2, 2.4-2.8; API.md "What a handler
gets and returns"), lane by lane:

* ``respond``: a failure schedule decided by record content (``Fate``: poison
  records fail every delivery, transient ones their first k deliveries; how
  a batch with failing records fails: raise, time out, return an invalid
  response, or return a partial batch response listing them).
* ``interpret``: what a handler's response means (success, whole-batch
  failure, or partial failure with the records before the lowest failed seq
  done), with ``report_failures`` on or off.
* ``simulate_lane``: the queue of pending sub-batches of one (shard, lane):
  fresh batches cut greedily, bisect at ceil(n/2) without using a retry,
  retries, discards after ``max_retries`` (RetryAttemptsExhausted, attempts =
  invocations of exactly those records), partial-response tails that use a
  retry and continue the attempt count, and records older than
  ``max_record_age`` split off and discarded (RecordAgeExceeded, attempts =
  max(1, invocations so far)) before their batch starts. Back-off is jittered,
  so the model does not predict times: it is told when each of the lane's
  actions started (``times``) and decides record age from that.
* ``bisect_isolation``: closed-form invocation counts of isolating one poison
  record by bisection.

and tumbling windows (SEMANTICS 0.4, 2.9; API.md "What a handler gets"), lane
by lane:

* ``window_of`` / ``window_end``: epoch-aligned windows on arrival time.
* ``window_invocations``: the invocations one (shard, lane) gets: batches that
  never span two windows, closing invocations (on reading a record of another
  window, or once the window's end has passed on the clock while the lane is
  idle), the state each invocation is given (carried per window, committed
  only on success), early closing past ``max_state_bytes``, and failed
  attempts that commit nothing.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import xxhash

TWO64 = 1 << 64
INT64_MIN = -(1 << 63)
UINT64_MAX = TWO64 - 1

DEFAULT_BATCH_SIZE = 100
DEFAULT_MAX_BATCH_BYTES = 6 * 2**20

SEQ_NBYTES = 8  # uint64
ARRIVAL_NBYTES = 8  # timestamp[ms]
SYSTEM_COLUMNS = ("seq", "key", "arrival")
RESERVED_PAYLOAD_NAMES = ("seq", "arrival")
BYTES_PAYLOAD_COLUMN = "data"


# --------------------------------------------------------------------------
# hashing, shards, lanes


def key_bytes(value: object) -> bytes:
    """The bytes XXH64 is computed over for one key value."""
    if isinstance(value, bool):
        raise TypeError(f"unsupported key type: {type(value).__name__}")
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, int):
        if value >= 1 << 63:
            if value > UINT64_MAX:
                raise ValueError(f"integer key out of range: {value}")
            return value.to_bytes(8, "little", signed=False)
        if value < INT64_MIN:
            raise ValueError(f"integer key out of range: {value}")
        return value.to_bytes(8, "little", signed=True)
    raise TypeError(f"unsupported key type: {type(value).__name__}")


def key_hash(value: object) -> int:
    """XXH64 (seed 0) of a key value, as an unsigned 64-bit int."""
    return xxhash.xxh64_intdigest(key_bytes(value), seed=0)


def shard_start(i: int, n_shards: int) -> int:
    """floor(i * 2**64 / n_shards): the first hash owned by shard i."""
    return (i * TWO64) // n_shards


def shard_of(hash64: int, n_shards: int) -> int:
    """The shard whose hash range [start_i, start_{i+1}) holds ``hash64``.

    Deliberately a plain scan over the range boundaries (not ``(h*N) >> 64``,
    which puts a hash equal to a non-integral boundary's floor one shard too low).
    """
    if n_shards < 1:
        raise ValueError("n_shards must be >= 1")
    if not 0 <= hash64 < TWO64:
        raise ValueError(f"not a 64-bit hash: {hash64}")
    for i in range(n_shards):
        if shard_start(i, n_shards) <= hash64 < shard_start(i + 1, n_shards):
            return i
    raise AssertionError("unreachable: the ranges cover [0, 2**64)")


def lane_of(hash64: int, parallelization: int) -> int:
    """lane = XXH64(key) mod parallelization (SEMANTICS 0.3)."""
    return hash64 % parallelization


# --------------------------------------------------------------------------
# record sizes


def _value_bytes(value: object) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes(value)  # type: ignore[arg-type]


def value_nbytes(type_: pa.DataType, value: object) -> int:
    """Bytes one value of ``type_`` counts towards ``max_batch_bytes``.

    Fixed width: the byte width (bool: 1), null or not. utf8/binary: 4 (the
    offset) + the value's bytes; large_utf8/large_binary: 8 + the bytes; a
    null var-length value counts only its offset. Validity bitmaps are free.
    """
    if pa.types.is_boolean(type_):
        return 1
    if pa.types.is_string(type_) or pa.types.is_binary(type_):
        return 4 + (0 if value is None else len(_value_bytes(value)))
    if pa.types.is_large_string(type_) or pa.types.is_large_binary(type_):
        return 8 + (0 if value is None else len(_value_bytes(value)))
    try:
        bits = type_.bit_width
    except ValueError:
        raise NotImplementedError(f"the model does not size {type_}") from None
    if bits % 8:
        raise NotImplementedError(f"the model does not size {type_}")
    return bits // 8


def row_nbytes(
    key_type: pa.DataType,
    key: object,
    payload_types: Sequence[pa.DataType],
    payload_values: Sequence[object],
) -> int:
    """Byte size of one stored record: seq + key + arrival + every payload column."""
    assert len(payload_types) == len(payload_values)
    total = SEQ_NBYTES + value_nbytes(key_type, key) + ARRIVAL_NBYTES
    for t, v in zip(payload_types, payload_values, strict=True):
        total += value_nbytes(t, v)
    return total


# --------------------------------------------------------------------------
# input normalisation (what a put stores)


@dataclass
class Prepared:
    """One put's input as the stream stores it."""

    keys: list[object]
    key_type: pa.DataType
    payload_names: list[str]
    payload_types: list[pa.DataType]
    payload_rows: list[tuple[object, ...]]

    def __len__(self) -> int:
        return len(self.keys)


def _as_table(data: Any) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if hasattr(data, "__arrow_c_stream__"):
        return pa.table(data)
    raise TypeError(f"unsupported input: {type(data).__name__}")


def prepare(data: Any, key: str = "key", keys: Sequence[object] | None = None) -> Prepared:
    """Normalise one put's input the way API.md describes; raise ValueError like it."""
    if isinstance(data, list):
        if data and all(isinstance(x, (bytes, str)) for x in data):
            if keys is None:
                raise ValueError("bytes payloads need keys=")
            if len(keys) != len(data):
                raise ValueError("keys= has the wrong length")
            key_values = list(keys)
            key_type = pa.array(key_values).type
            payload = [_value_bytes(x) for x in data]
            prepared = Prepared(
                key_values, key_type, [BYTES_PAYLOAD_COLUMN], [pa.binary()], [(p,) for p in payload]
            )
            _check_keys(prepared)
            return prepared
        table = pa.Table.from_pylist(data)
    else:
        table = _as_table(data)
    if table.num_rows == 0 and key not in table.column_names:
        return Prepared([], pa.null(), [], [], [])
    if key not in table.column_names:
        raise ValueError(f"missing key column {key!r}")
    for name in RESERVED_PAYLOAD_NAMES:
        if name in table.column_names:
            raise ValueError(f"reserved column name {name!r}")
    if key != "key" and "key" in table.column_names:
        raise ValueError("column 'key' is reserved when key= names another column")
    key_type = table.schema.field(key).type
    key_values = table.column(key).to_pylist()
    names = [n for n in table.column_names if not (key == "key" and n == "key")]
    types = [table.schema.field(n).type for n in names]
    columns = [table.column(n).to_pylist() for n in names]
    rows = list(zip(*columns, strict=True)) if columns else [() for _ in key_values]
    prepared = Prepared(key_values, key_type, names, types, rows)
    _check_keys(prepared)
    return prepared


def _check_keys(prepared: Prepared) -> None:
    t = prepared.key_type
    supported = (
        pa.types.is_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_string(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_integer(t)
        or pa.types.is_null(t)  # every key null (or no rows): reported per row below
    )
    if not supported:
        raise ValueError(f"unsupported key type {t}")
    for row, k in enumerate(prepared.keys):
        if k is None:
            raise ValueError(f"null key at row {row}")


# --------------------------------------------------------------------------
# the stream


@dataclass(frozen=True)
class RefRecord:
    """One stored record, as the model sees it."""

    shard: int
    seq: int
    key: object
    hash: int
    nbytes: int
    put_index: int
    row: int
    payload: tuple[object, ...]
    arrival_ms: int = 0


@dataclass
class ReferenceStream:
    """Per-shard logs with sequence numbers from 0, as ``MemoryStream`` keeps them."""

    n_shards: int
    records: dict[int, list[RefRecord]] = field(default_factory=dict)
    next_seq: list[int] = field(default_factory=list)
    n_puts: int = 0
    prepared: list[Prepared] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.n_shards < 1:
            raise ValueError("n_shards must be >= 1")
        self.records = {s: [] for s in range(self.n_shards)}
        self.next_seq = [0] * self.n_shards

    def put(
        self,
        data: Any,
        key: str = "key",
        keys: Sequence[object] | None = None,
        arrival_ms: int = 0,
    ) -> list[tuple[int, int]]:
        """Store one put; return (shard, seq) per input row, in input order.

        ``arrival_ms``: the clock time of the put, in epoch ms (record age)."""
        prepared = prepare(data, key, keys)  # raises before anything is stored
        self.prepared.append(prepared)
        out: list[tuple[int, int]] = []
        put_index = self.n_puts
        self.n_puts += 1
        for row, (k, payload) in enumerate(zip(prepared.keys, prepared.payload_rows, strict=True)):
            h = key_hash(k)
            shard = shard_of(h, self.n_shards)
            seq = self.next_seq[shard]
            self.next_seq[shard] += 1
            nbytes = row_nbytes(prepared.key_type, k, prepared.payload_types, payload)
            rec = RefRecord(shard, seq, k, h, nbytes, put_index, row, tuple(payload), arrival_ms)
            self.records[shard].append(rec)
            out.append((shard, seq))
        return out

    def stored_schema(self) -> tuple[list[str], list[pa.DataType]] | None:
        """Names and types of the stored columns, from the first put with a key column."""
        for p in self.prepared:
            if not pa.types.is_null(p.key_type):
                names = [*SYSTEM_COLUMNS, *p.payload_names]
                types = [pa.uint64(), p.key_type, pa.timestamp("ms", tz="UTC"), *p.payload_types]
                return names, types
        return None

    def all_records(self) -> list[RefRecord]:
        return [r for s in range(self.n_shards) for r in self.records[s]]

    def by_shard_seq(self) -> dict[tuple[int, int], RefRecord]:
        return {(r.shard, r.seq): r for r in self.all_records()}

    def __len__(self) -> int:
        return sum(len(v) for v in self.records.values())


def partition(keys: Sequence[object], n_shards: int) -> tuple[dict[int, list[int]], list[tuple[int, int]]]:
    """Partition one put of ``keys`` into a fresh stream.

    Returns (per shard the input row indices in input order, per row (shard, seq)).
    """
    rows: dict[int, list[int]] = {s: [] for s in range(n_shards)}
    assigned: list[tuple[int, int]] = []
    for i, k in enumerate(keys):
        shard = shard_of(key_hash(k), n_shards)
        assigned.append((shard, len(rows[shard])))
        rows[shard].append(i)
    return rows, assigned


# --------------------------------------------------------------------------
# batches and checkpoints


def cut_batches(records: Iterable[Any], batch_size: int, max_batch_bytes: int) -> list[list[int]]:
    """Greedy cut of one lane's records (objects with ``.seq`` and ``.nbytes``).

    A batch takes the next record while it has fewer than ``batch_size``
    records and its bytes plus the record's stay <= ``max_batch_bytes``, or
    it is still empty (a single oversize record goes alone).
    """
    batches: list[list[int]] = []
    current: list[int] = []
    current_bytes = 0
    for r in sorted(records, key=lambda r: r.seq):
        if current and (len(current) >= batch_size or current_bytes + r.nbytes > max_batch_bytes):
            batches.append(current)
            current, current_bytes = [], 0
        current.append(r.seq)
        current_bytes += r.nbytes
    if current:
        batches.append(current)
    return batches


def expected_batches(
    records_by_shard: Mapping[int, Iterable[Any]],
    parallelization: int = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
) -> dict[tuple[int, int], list[list[int]]]:
    """Per (shard, lane), the batches (lists of seqs, in order) of records all present
    before the consumer runs. Records are objects with ``.seq``, ``.hash``, ``.nbytes``.
    Lanes without records are absent."""
    out: dict[tuple[int, int], list[list[int]]] = {}
    for shard, records in records_by_shard.items():
        lanes: dict[int, list[Any]] = {}
        for r in sorted(records, key=lambda r: r.seq):
            lanes.setdefault(lane_of(r.hash, parallelization), []).append(r)
        for lane, lane_records in sorted(lanes.items()):
            out[(shard, lane)] = cut_batches(lane_records, batch_size, max_batch_bytes)
    return out


def checkpoint(all_seqs: Iterable[int], done_seqs: Iterable[int]) -> int | None:
    """Highest S such that every record with seq <= S is done (None if none is)."""
    done = set(done_seqs)
    result = None
    for s in sorted(all_seqs):
        if s not in done:
            break
        result = s
    return result


def final_checkpoints(records_by_shard: Mapping[int, Sequence[Any]]) -> dict[int, int | None]:
    """Checkpoint per shard once everything is done: its last seq, None if empty."""
    return {shard: (max(r.seq for r in recs) if recs else None) for shard, recs in records_by_shard.items()}


# --------------------------------------------------------------------------
# the failure policy (SEMANTICS 0.1, 0.2, 2.4-2.8)

RETRY_ATTEMPTS_EXHAUSTED = "RetryAttemptsExhausted"
RECORD_AGE_EXCEEDED = "RecordAgeExceeded"

# How a batch holding failing records fails, strongest first: when its failing
# records have several kinds, the first kind of this tuple among them wins.
FAILURE_KINDS = ("timeout", "raise", "invalid", "partial")


@dataclass(frozen=True)
class FailurePolicy:
    """The consumer options the failure policy depends on (API.md names)."""

    batch_size: int = DEFAULT_BATCH_SIZE
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    bisect_on_error: bool = False
    max_retries: int = -1  # -1: retry forever
    max_record_age: float = -1  # seconds; -1: no limit
    report_failures: bool = False


@dataclass(frozen=True)
class Fate:
    """How one record behaves when delivered.

    ``poison``: every delivery fails. ``transient``: the first ``transient``
    deliveries fail, later ones succeed. ``kind``: what the handler does with
    a batch holding this record while it fails (``FAILURE_KINDS``).
    """

    poison: bool = False
    transient: int = 0
    kind: str = "raise"

    def __post_init__(self) -> None:
        if self.kind not in FAILURE_KINDS:
            raise ValueError(f"unknown failure kind {self.kind!r}")
        if self.transient < 0:
            raise ValueError("transient must be >= 0")


OK_FATE = Fate()


@dataclass(frozen=True)
class Response:
    """What the handler does with one batch: ``kind`` "ok" or one of ``FAILURE_KINDS``;
    ``failed``: the batch's failing seqs (what a partial response lists), in batch order."""

    kind: str
    failed: tuple[int, ...] = ()


def respond(fates: Mapping[int, Fate], seqs: Sequence[int], deliveries: Mapping[int, int]) -> Response:
    """The handler's response to a batch of ``seqs``; ``deliveries[seq]`` counts the
    deliveries of that record including this one. Records without a fate succeed."""
    failed = []
    for s in seqs:
        fate = fates.get(s, OK_FATE)
        if fate.poison or deliveries[s] <= fate.transient:
            failed.append(s)
    if not failed:
        return Response("ok")
    kinds = {fates[s].kind for s in failed}
    kind = next(k for k in FAILURE_KINDS if k in kinds)
    return Response(kind, tuple(failed))


@dataclass(frozen=True)
class Outcome:
    """What an invocation's result means to the consumer.

    ``status``: "ok", "fail" (the whole batch) or "partial" (the first ``done``
    records succeeded, the rest failed). ``function_error``: a "fail" came from
    an exception or a timeout (functionError "Unhandled"), not from a response.
    """

    status: str
    done: int = 0
    function_error: bool = False


def interpret(response: Response, seqs: Sequence[int], report_failures: bool) -> Outcome:
    """SEMANTICS 2.4, 2.8: exceptions and timeouts fail the whole batch; without
    ``report_failures`` any returned value is a success; with it, an invalid
    response fails the whole batch and a partial response marks the records
    before the lowest failed seq done."""
    if response.kind == "ok":
        return Outcome("ok")
    if response.kind in ("raise", "timeout"):
        return Outcome("fail", function_error=True)
    if not report_failures:
        return Outcome("ok")
    if response.kind == "invalid" or not response.failed or not set(response.failed) <= set(seqs):
        return Outcome("fail")
    return Outcome("partial", done=list(seqs).index(min(response.failed)))


def is_expired(arrival_ms: int, max_record_age: float, now: float) -> bool:
    """A record is too old once its age on the clock is strictly greater than the limit."""
    return max_record_age >= 0 and arrival_ms + round(max_record_age * 1000) < now * 1000.0


@dataclass(frozen=True)
class ModelInvocation:
    """One invocation. ``verdict``: what followed it: "ok" (its records are done),
    "split", "retry" (after back-off) or "discard" (retries exhausted)."""

    seqs: tuple[int, ...]
    attempt: int
    response: Response
    outcome: Outcome
    verdict: str
    time: float


@dataclass(frozen=True)
class ModelDiscard:
    """Records sent to on_failure. ``failure``: the kind of the failure that exhausted the
    retries (a ``FAILURE_KINDS`` entry), None for RecordAgeExceeded. ``function_error``: the
    destination document's functionError is "Unhandled"."""

    seqs: tuple[int, ...]
    condition: str
    attempts: int
    failure: str | None
    function_error: bool
    time: float


@dataclass
class LaneTrace:
    """What the model predicts for one (shard, lane), in order."""

    actions: list[ModelInvocation | ModelDiscard] = field(default_factory=list)
    done: list[int] = field(default_factory=list)  # records that succeeded, in order
    errors: int = 0  # whole-batch failures
    retries: int = 0  # retries consumed (whole-batch and partial)
    bisects: int = 0  # splits

    @property
    def invocations(self) -> list[ModelInvocation]:
        return [a for a in self.actions if isinstance(a, ModelInvocation)]

    @property
    def discards(self) -> list[ModelDiscard]:
        return [a for a in self.actions if isinstance(a, ModelDiscard)]

    @property
    def discarded(self) -> list[int]:
        return [s for d in self.discards for s in d.seqs]


@dataclass
class _SubBatch:
    """A pending sub-batch at the head of a lane's queue."""

    seqs: list[int]
    attempt: int = 1  # the attempt number of its next invocation
    retries: int = 0  # retries consumed

    @property
    def invocations(self) -> int:
        return self.attempt - 1


def simulate_lane(
    records: Iterable[Any],
    policy: FailurePolicy,
    fates: Mapping[int, Fate],
    times: Sequence[float] | None = None,
) -> LaneTrace:
    """Run one lane's records (objects with ``.seq``, ``.nbytes``, ``.arrival_ms``)
    through the failure policy.

    The lane keeps an ordered queue of pending sub-batches. With the queue
    empty, the next fresh batch is cut greedily (``cut_batches``). Before a
    batch (fresh or pending) starts, its records too old at that moment are
    split off the front and discarded. Then it is invoked:

    * success: its records are done;
    * partial response: the records before the lowest failed seq are done;
      the failed tail stays at the head of the queue and uses one retry, its
      attempt count going on (SEMANTICS 0.2, 2.7);
    * whole-batch failure, bisect on and n > 1: split at ceil(n/2), left half
      first, both halves with fresh attempt counts, no retry used (0.1);
    * otherwise one retry is used;
    * a failure that would use retry number ``max_retries + 1`` discards the
      batch instead (RetryAttemptsExhausted, attempts = its invocations).

    ``times[k]`` is when the lane's k-th action (invocation or discard) started:
    record age is judged at that moment. ``times`` may be None when
    ``policy.max_record_age`` is -1.
    """
    if times is None:
        if policy.max_record_age >= 0:
            raise ValueError("record age needs the times of the lane's actions")
        times = []
    lane_records = sorted(records, key=lambda r: r.seq)
    arrival = {r.seq: r.arrival_ms for r in lane_records}
    fresh = deque(lane_records)
    queue: deque[_SubBatch] = deque()
    deliveries: Counter[int] = Counter()
    trace = LaneTrace()

    def now() -> float:
        step = len(trace.actions)
        if step < len(times):
            return times[step]
        return times[-1] if times else 0.0

    def expired_prefix(seqs: Sequence[int], t: float) -> int:
        count = 0
        while count < len(seqs) and is_expired(arrival[seqs[count]], policy.max_record_age, t):
            count += 1
        return count

    def discard(seqs: Sequence[int], condition: str, attempts: int, failure: str | None, fe: bool) -> None:
        trace.actions.append(ModelDiscard(tuple(seqs), condition, attempts, failure, fe, now()))

    while queue or fresh:
        t = now()
        if not queue:
            head_records = list(itertools.islice(fresh, policy.batch_size))
            candidate = cut_batches(head_records, policy.batch_size, policy.max_batch_bytes)[0]
            old = expired_prefix(candidate, t)
            if old:
                discard(candidate[:old], RECORD_AGE_EXCEEDED, 1, None, False)
                for _ in range(old):
                    fresh.popleft()
                continue
            for _ in candidate:
                fresh.popleft()
            queue.append(_SubBatch(candidate))
        head = queue[0]
        old = expired_prefix(head.seqs, t)
        if old:
            discard(head.seqs[:old], RECORD_AGE_EXCEEDED, max(1, head.invocations), None, False)
            head.seqs = head.seqs[old:]
            if not head.seqs:
                queue.popleft()
            continue

        seqs = tuple(head.seqs)
        for s in seqs:
            deliveries[s] += 1
        response = respond(fates, seqs, deliveries)
        outcome = interpret(response, seqs, policy.report_failures)
        attempt = head.attempt
        exhausted = policy.max_retries >= 0 and head.retries + 1 > policy.max_retries
        if outcome.status == "ok":
            verdict = "ok"
        elif outcome.status == "fail" and policy.bisect_on_error and len(seqs) > 1:
            verdict = "split"
        else:
            verdict = "discard" if exhausted else "retry"
        trace.actions.append(ModelInvocation(seqs, attempt, response, outcome, verdict, t))

        if outcome.status == "fail":
            trace.errors += 1
        elif outcome.status == "partial":
            trace.done.extend(seqs[: outcome.done])
            seqs = seqs[outcome.done :]  # the failed tail goes on as the head batch
            head.seqs = list(seqs)
        if verdict == "ok":
            trace.done.extend(seqs)
            queue.popleft()
        elif verdict == "split":
            left = (len(seqs) + 1) // 2
            queue.popleft()
            queue.appendleft(_SubBatch(list(seqs[left:])))
            queue.appendleft(_SubBatch(list(seqs[:left])))
            trace.bisects += 1
        elif verdict == "discard":
            queue.popleft()
            discard(seqs, RETRY_ATTEMPTS_EXHAUSTED, attempt, response.kind, outcome.function_error)
        else:
            head.retries += 1
            head.attempt += 1
            trace.retries += 1
    return trace


def lanes_of(
    records_by_shard: Mapping[int, Iterable[Any]], parallelization: int
) -> dict[tuple[int, int], list[Any]]:
    """Per (shard, lane) its records in seq order (objects with ``.seq`` and ``.hash``)."""
    out: dict[tuple[int, int], list[Any]] = {}
    for shard, records in records_by_shard.items():
        for r in sorted(records, key=lambda r: r.seq):
            out.setdefault((shard, lane_of(r.hash, parallelization)), []).append(r)
    return out


def expected_failure_traces(
    records_by_shard: Mapping[int, Iterable[Any]],
    parallelization: int,
    policy: FailurePolicy,
    fates: Mapping[tuple[int, int], Fate],
    times: Mapping[tuple[int, int], Sequence[float]] | None = None,
) -> dict[tuple[int, int], LaneTrace]:
    """``simulate_lane`` for every (shard, lane) with records. ``fates`` by (shard, seq);
    ``times`` by (shard, lane) (see ``simulate_lane``)."""
    out = {}
    for (shard, lane), records in lanes_of(records_by_shard, parallelization).items():
        lane_fates = {r.seq: fates[(shard, r.seq)] for r in records if (shard, r.seq) in fates}
        lane_times = None if times is None else times.get((shard, lane), [])
        out[(shard, lane)] = simulate_lane(records, policy, lane_fates, lane_times)
    return out


def bisect_isolation(n: int, index: int, max_retries: int) -> tuple[int, int]:
    """One batch of ``n`` records whose record ``index`` always fails (an exception),
    bisect on, ``max_retries`` >= 0: (invocations in all, invocations holding the poison).

    Splitting at ceil(n/2) reaches the poison alone after d splits, d = its depth in
    the split tree (floor(log2 n) <= d <= ceil(log2 n)); each split also runs the
    other half once; the lone record then runs max_retries + 1 times.
    So: total = 2d + max_retries + 1, holding the poison = d + max_retries + 1.
    """
    if not 0 <= index < n:
        raise ValueError("index out of range")
    depth = 0
    while n > 1:
        left = (n + 1) // 2
        if index < left:
            n = left
        else:
            n, index = n - left, index - left
        depth += 1
    return 2 * depth + max_retries + 1, depth + max_retries + 1


def bisect_depth_bounds(n: int) -> tuple[int, int]:
    """(floor(log2 n), ceil(log2 n)): the range of a record's depth in the split tree."""
    return (n.bit_length() - 1, math.ceil(math.log2(n)) if n > 1 else 0)


# --------------------------------------------------------------------------
# tumbling windows (SEMANTICS 0.4, 2.9)


def window_of(arrival_ms: int, window_ms: int) -> int:
    """Index of the window holding ``arrival_ms``: windows are aligned to the epoch,
    window i covers [i * W, (i + 1) * W) (floor division, also before the epoch)."""
    return arrival_ms // window_ms


def window_end(index: int, window_ms: int) -> float:
    """Clock time (epoch seconds) at which window ``index`` ends."""
    return (index + 1) * window_ms / 1000


def state_nbytes(state: Mapping[str, Any]) -> int:
    """The size ``max_state_bytes`` limits: the state as compact JSON, in UTF-8 bytes."""
    return len(json.dumps(state, separators=(",", ":"), ensure_ascii=False).encode())


def append_seen(state: Mapping[str, Any], seqs: Sequence[int]) -> dict[str, Any]:
    """What the window tests' handler does with a batch: append its seqs to ``state["seen"]``."""
    return {**state, "seen": [*state.get("seen", []), *seqs]}


@dataclass(frozen=True)
class WindowInvocation:
    """One invocation of a windowed handler on one (shard, lane).

    ``window``: the index of its window (``window_of``). ``seqs``: its records, () for
    a closing invocation (``is_final``). ``terminated_early``: a closing invocation
    made because the state outgrew ``max_state_bytes`` (the window then goes on).
    ``state``: the state the handler is given. ``attempt``: 1 on the first try.
    ``ok``: it succeeds (a failed invocation commits nothing and is tried again).
    ``time``: the clock time it starts, None when not predicted.
    """

    window: int
    seqs: tuple[int, ...]
    is_final: bool
    terminated_early: bool
    state: Mapping[str, Any]
    attempt: int = 1
    ok: bool = True
    time: float | None = None


def window_invocations(
    records: Iterable[Any],
    window: float,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    max_state_bytes: int | None = None,
    read_at: Mapping[int, float] | float | None = None,
    failures: Mapping[int, int] | None = None,
    step: Callable[[Mapping[str, Any], Sequence[int]], Mapping[str, Any]] = append_seen,
) -> list[WindowInvocation]:
    """The invocations one lane gets with a tumbling window of ``window`` seconds.

    ``records``: the lane's records (objects with ``.seq``, ``.arrival_ms``, ``.nbytes``),
    read in seq order. A record belongs to window ``window_of(arrival)``. Handlers take
    no clock time: whenever the lane can act it does, so it is idle only once it has
    delivered every record it can read.

    * A data invocation takes the next records while they are readable, belong to the
      head record's window, number at most ``batch_size`` and fit ``max_batch_bytes``
      (a single larger record goes alone): batches never span two windows.
    * The open window gets its closing invocation (``is_final``, no records) when the
      lane reads a record of another window, or when the window's end has passed on
      the clock while the lane is idle; after the last record, the lane is idle.
    * State is carried between the invocations of one window: each data invocation is
      given the state the previous successful one left (``step`` computes it; a new
      window starts with ``{}``), a closing invocation is given the window's state and
      the next window starts afresh.
    * After a successful data invocation whose state is larger than ``max_state_bytes``
      (``state_nbytes``), the next invocation is a closing one with ``terminated_early``;
      the same window then goes on with fresh state and still gets its normal closing.
    * ``failures[k]``: the k-th successful invocation of the lane (from 0, closing ones
      included) fails that many times first. A failed invocation commits nothing and
      blocks the lane: its retry is the same invocation, given the same state.

    ``read_at``: when each record (by seq) is put, so can first be read (never
    decreasing along the lane); a float: every record at that time; None: times are
    not predicted. The model does not predict back-off: with failures, it assumes
    retries take no clock time or every record is readable from the start.
    """
    window_ms = round(window * 1000)
    lane = sorted(records, key=lambda r: r.seq)
    if read_at is None or isinstance(read_at, (int, float)):
        times: list[float | None] = [read_at] * len(lane)
    else:
        times = [read_at[r.seq] for r in lane]
    known = [t for t in times if t is not None]
    if known != sorted(known):
        raise ValueError("records are read in seq order: read_at must not decrease along the lane")
    fails = failures or {}
    out: list[WindowInvocation] = []
    open_window: int | None = None
    state: Mapping[str, Any] = {}
    now: float | None = None
    succeeded = 0

    def invoke(seqs: Sequence[int], is_final: bool, early: bool) -> None:
        nonlocal succeeded
        assert open_window is not None
        n_fail = fails.get(succeeded, 0)
        for attempt in range(1, n_fail + 2):
            ok = attempt == n_fail + 1
            out.append(WindowInvocation(open_window, tuple(seqs), is_final, early, state, attempt, ok, now))
        succeeded += 1

    def close(early: bool) -> None:
        nonlocal open_window, state
        invoke((), True, early)
        state = {}
        if not early:
            open_window = None

    def readable(j: int) -> bool:
        t = times[j]
        return t is None or now is None or t <= now

    def close_when_idle() -> None:
        nonlocal now
        assert open_window is not None
        if now is not None:
            now = max(now, window_end(open_window, window_ms))
        close(False)

    i = 0
    while i < len(lane):
        t = times[i]
        if t is not None and (now is None or t > now):
            # The lane is idle until record i can be read: its window closes first if it ends by then.
            if open_window is not None and window_end(open_window, window_ms) <= t:
                close_when_idle()
            now = t
        w = window_of(lane[i].arrival_ms, window_ms)
        if open_window is not None and w != open_window:
            close(False)  # a record of another window was read
            continue
        open_window = w
        j = i + 1
        nbytes = lane[i].nbytes
        while (
            j < len(lane)
            and j - i < batch_size
            and readable(j)
            and window_of(lane[j].arrival_ms, window_ms) == w
            and nbytes + lane[j].nbytes <= max_batch_bytes
        ):
            nbytes += lane[j].nbytes
            j += 1
        seqs = [r.seq for r in lane[i:j]]
        invoke(seqs, False, False)
        state = step(state, seqs)
        i = j
        if max_state_bytes is not None and state_nbytes(state) > max_state_bytes:
            close(True)
    if open_window is not None:
        close_when_idle()
    return out


def expected_window_invocations(
    records_by_shard: Mapping[int, Iterable[Any]],
    parallelization: int,
    window: float,
    *,
    read_at: Mapping[tuple[int, int], float] | float | None = None,
    failures: Mapping[tuple[int, int], Mapping[int, int]] | None = None,
    **options: Any,
) -> dict[tuple[int, int], list[WindowInvocation]]:
    """``window_invocations`` for every (shard, lane) with records. ``read_at`` by
    (shard, seq) (or one float), ``failures`` by (shard, lane); ``options``: the other
    keyword arguments of ``window_invocations``."""
    out = {}
    for (shard, lane), records in lanes_of(records_by_shard, parallelization).items():
        lane_read_at: Mapping[int, float] | float | None = read_at
        if isinstance(read_at, Mapping):
            lane_read_at = {r.seq: read_at[(shard, r.seq)] for r in records}
        lane_failures = None if failures is None else failures.get((shard, lane))
        out[(shard, lane)] = window_invocations(
            records, window, read_at=lane_read_at, failures=lane_failures, **options
        )
    return out
