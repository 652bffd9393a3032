"""``MemoryStream``: a sharded, ordered stream held in memory."""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from streamcore import _arrow, _hashing, _partition
from streamcore.clock import SYSTEM_CLOCK, Clock
from streamcore.errors import ConfigError, InvalidRecordsError
from streamcore.sources.ingest import check_reserved, key_column, to_table
from streamcore.sources.shardlog import ShardLog

ARRIVAL_TYPE = pa.timestamp("ms", tz="UTC")


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """A shard of a stream's layout: id, hash range ``[start, end)``, lineage, whether closed."""

    shard_id: int
    start: int
    end: int
    parents: tuple[int, ...] = ()
    closed: bool = False


RESULT_SCHEMA = pa.schema([("shard", pa.int64()), ("seq", pa.uint64())])
PutListener = Callable[["MemoryStream", list[int]], None]


class MemoryStream:
    """A Kinesis-like stream in memory: records sharded by key hash, ordered per shard.

    Parameters
    ----------
    shards : int
        Number of shards; shard i owns the i-th equal range of the 64-bit hash space.
    name : str
        Name reported in ``Batch.source`` and metrics.
    retention : float
        Seconds a record is kept (on the clock) before it is dropped, read or not.
    clock : Clock, optional
        Stamps ``arrival``. Without one, the clock of the App it is attached to.

    ``put`` is thread-safe; records become visible to consumers atomically per call.
    """

    def __init__(
        self,
        shards: int = 1,
        *,
        name: str = "stream",
        retention: float = 86400.0,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
            raise ConfigError("shards", shards, "an integer >= 1")
        if not isinstance(retention, (int, float)) or not math.isfinite(retention) or retention <= 0:
            raise ConfigError("retention", retention, "seconds > 0")
        self.name = name
        self.retention = float(retention)
        self._own_clock = clock
        self._app_clock: Clock | None = None
        self._lock = threading.Lock()
        self._logs: dict[int, ShardLog] = {}
        for spec in self._initial_shards(shards):
            log = self._logs[spec.shard_id] = self._new_log(spec.shard_id, spec.start, spec.end, spec.parents)
            log.closed = spec.closed
        for log in self._logs.values():
            for parent in log.parents:
                self._logs[parent].children += (log.shard_id,)
        # Open shards (those that take puts), in hash-range order: their ranges tile the hash space.
        self._open: list[int] = sorted(
            (i for i, log in self._logs.items() if not log.closed), key=lambda i: self._logs[i].range_start
        )
        self._listeners: list[PutListener] = []
        self._closed = False
        # Fixed by the first put: every record of a stream has one schema.
        self._key_type: pa.DataType | None = None
        self._payload_schema: pa.Schema | None = None

    # -- configuration ---------------------------------------------------------

    @property
    def clock(self) -> Clock:
        return self._own_clock or self._app_clock or SYSTEM_CLOCK

    @property
    def shard_ids(self) -> list[int]:
        """Open shards (those that accept puts), in hash-range order."""
        return list(self._open)

    @property
    def all_shard_ids(self) -> list[int]:
        """Every shard held, open or closed by a reshard, in id order (parents before children)."""
        return sorted(self._logs)

    @property
    def shard_count(self) -> int:
        """How many shards are held, open or closed."""
        return len(self._logs)

    def shard_log(self, shard_id: int) -> ShardLog:
        return self._logs[shard_id]

    def _attach(self, clock: Clock, listener: PutListener) -> None:
        with self._lock:
            if self._app_clock is None:
                self._app_clock = clock
            self._listeners.append(listener)

    def _detach(self, listener: PutListener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    # -- writing ---------------------------------------------------------------

    def put(self, data: Any, key: str = "key", *, keys: Sequence[Any] | None = None) -> pa.Table:
        """Append records; returns each input row's ``shard`` (int64) and ``seq`` (uint64).

        ``data`` is a pyarrow Table or RecordBatch, an object exporting
        ``__arrow_c_stream__``, a list of dicts, or a list of bytes/str payloads
        (stored in a ``data`` column; pass ``keys=``). ``key`` names the key
        column. A missing or null key raises ``ValueError`` naming the row, and
        nothing of the call is stored.

        The per-record work (hashing the keys, grouping rows by shard, moving the
        columns into shard order) is native; from 16,384 rows a call on (see
        ``streamcore._arrow.parallel_config``) it is split across the calling
        thread and one helper thread, with the same result.
        """
        if self._closed:
            raise InvalidRecordsError(f"stream {self.name!r} is closed")
        table = to_table(data, payload_column="data")
        if table.num_rows == 0:
            return RESULT_SCHEMA.empty_table()
        check_reserved(table, key if keys is None else None)
        keys_col = key_column(table, key, keys)
        _hashing.check_keys(keys_col)  # raises on null or unsupported keys (hashed in _append)
        keys_col = keys_col.chunk(0) if keys_col.num_chunks == 1 else keys_col.combine_chunks()
        if keys is None and key == "key":
            table = table.drop_columns(["key"])
        with self._lock:
            key_name = key if keys is None and key != "key" else None
            result, touched, listeners = self._append(table, keys_col, key_name)
        self._tell(listeners, touched)
        return result

    def _append(
        self, table: pa.Table, keys: pa.Array, key_name: str | None = None
    ) -> tuple[pa.Table, list[int], list[PutListener]]:
        table = self._conform(table, keys.type)
        arrival_ms = int(self.clock.now() * 1000)
        open_logs = [self._logs[s] for s in self._open]
        n = table.num_rows
        names = table.schema.names
        columns = [c.chunk(0) if c.num_chunks == 1 else c.combine_chunks() for c in table.columns]
        firsts = [log.next_seq for log in open_logs]
        ids = [log.shard_id for log in open_logs]
        if len(open_logs) > 1:
            # Key hashes, shard and seq of every row, the rows grouped by shard (in
            # arrival order within each) and their seqs in that order, in one native pass.
            order, counts, shards, row_seqs, seqs = _partition.assign_keys(
                keys, [log.range_start for log in open_logs], ids, firsts
            )
            # Group rows by shard: every column in one native pass, the key column
            # only once when it is also a payload column.
            key_index = names.index(key_name) if key_name in names else -1
            gathered = _arrow.gather(columns if key_index >= 0 else [*columns, keys], order)
            columns = gathered[: len(columns)]
            keys = columns[key_index] if key_index >= 0 else gathered[-1]
        else:  # one shard: input order is shard order
            counts = [n]
            seqs = row_seqs = _arrow.sequence(firsts[0], n)
            shards = _arrow.repeat64(ids[0], n, pa.int64())
        # One batch for the whole put, sliced per shard: slices cost ~1 us, building
        # a batch per shard several times that.
        arrays = [seqs, keys, _arrow.repeat64(arrival_ms, n, ARRIVAL_TYPE), *columns]
        records = pa.RecordBatch.from_arrays(arrays, names=["seq", "key", "arrival", *names])
        sizes = _arrow.row_nbytes(arrays, counts)
        pending: list[tuple[ShardLog, pa.RecordBatch, pa.Array]] = []
        offset = 0
        for log, count in zip(open_logs, counts, strict=True):
            if count:
                pending.append((log, records.slice(offset, count), sizes.slice(offset, count)))
                offset += count
        self._store_locked(pending, arrival_ms)
        touched = [log.shard_id for log, _, _ in pending]
        self._expire_locked(arrival_ms)
        listeners = list(self._listeners)
        result = pa.Table.from_arrays([shards, row_seqs], schema=RESULT_SCHEMA)
        assert result.num_rows == n
        return result, touched, listeners

    def _initial_shards(self, shards: int) -> list[ShardSpec]:
        """The shards a new stream starts with (a hook: ``LocalLog`` reads its saved layout)."""
        starts = _partition.even_ranges(shards)
        ends = [*starts[1:], 1 << 64]
        return [ShardSpec(i, start, end) for i, (start, end) in enumerate(zip(starts, ends, strict=True))]

    def _new_log(self, shard_id: int, start: int, end: int, parents: tuple[int, ...] = ()) -> ShardLog:
        """The log of one shard (a hook: ``LocalLog`` returns one backed by segment files)."""
        return ShardLog(shard_id, start, end, parents)

    # -- resharding ----------------------------------------------------------------

    def split_shard(self, shard_id: int, at: int | None = None) -> tuple[int, int]:
        """Split an open shard in two at hash ``at`` (default: the middle of its range).

        The shard is closed: it takes no more puts and its records stay readable.
        Two new shards take its hash range, ``[start, at)`` and ``[at, end)``.
        Consumers finish a closed shard (to SHARD_END: every record done, open
        windows closed) before they start its children, so per-key order holds
        across the reshard (SEMANTICS 0.6). Returns the two new shard ids.
        """
        with self._reshard_guard(), self._lock:
            parent = self._open_log(shard_id)
            start, end = parent.range_start, parent.range_end
            if at is None:
                at = start + (end - start) // 2
            if not isinstance(at, int) or isinstance(at, bool) or not start < at < end:
                raise ValueError(f"at={at!r} is not a hash inside shard {shard_id}'s range ({start}, {end})")
            first = max(self._logs) + 1
            children = [ShardSpec(first, start, at, (shard_id,)), ShardSpec(first + 1, at, end, (shard_id,))]
            self._reshard_locked([parent], children)
            listeners = list(self._listeners)
        self._tell(listeners, [first, first + 1])
        return first, first + 1

    def merge_shards(self, a: int, b: int) -> int:
        """Merge two open shards with adjacent hash ranges into a new one; returns its id.

        Both are closed, as by ``split_shard``; the new shard starts once both are done.
        """
        with self._reshard_guard(), self._lock:
            if a == b:
                raise ValueError(f"cannot merge shard {a} with itself")
            low, high = sorted((self._open_log(a), self._open_log(b)), key=lambda log: log.range_start)
            if low.range_end != high.range_start:
                raise ValueError(f"shards {a} and {b} are not adjacent: their hash ranges do not touch")
            child = max(self._logs) + 1
            parents = (low.shard_id, high.shard_id)
            self._reshard_locked([low, high], [ShardSpec(child, low.range_start, high.range_end, parents)])
            listeners = list(self._listeners)
        self._tell(listeners, [child])
        return child

    def _open_log(self, shard_id: int) -> ShardLog:
        log = self._logs.get(shard_id)
        if log is None:
            raise ValueError(f"stream {self.name!r} has no shard {shard_id!r}")
        if log.closed:
            raise ValueError(f"shard {shard_id} of stream {self.name!r} is closed (resharded)")
        return log

    def _reshard_guard(self) -> contextlib.AbstractContextManager[Any]:
        """Held around a reshard (a hook: ``LocalLog`` holds its put lock, as puts release ``_lock``)."""
        return contextlib.nullcontext()

    def _reshard_locked(self, parents: list[ShardLog], children: list[ShardSpec]) -> None:
        """Close ``parents`` (adjacent open shards, in range order) and open ``children`` in their place.

        A hook: ``LocalLog`` also makes the new layout durable before it takes effect.
        """
        self._open = self._open_after(parents, children)
        logs = [self._new_log(c.shard_id, c.start, c.end, c.parents) for c in children]
        ids = tuple(log.shard_id for log in logs)
        for parent in parents:
            parent.closed = True
            parent.children += ids
        for log in logs:
            self._logs[log.shard_id] = log

    def _open_after(self, parents: list[ShardLog], children: list[ShardSpec]) -> list[int]:
        """The open shards once ``children`` take the place of ``parents`` (adjacent, in range order)."""
        opened = list(self._open)
        i = opened.index(parents[0].shard_id)
        opened[i : i + len(parents)] = [c.shard_id for c in children]
        return opened

    def _tell(self, listeners: list[PutListener], shard_ids: list[int]) -> None:
        for listener in listeners:  # outside the lock: listeners take their App's lock
            listener(self, shard_ids)

    def _store_locked(
        self, pending: list[tuple[ShardLog, pa.RecordBatch, pa.Array]], arrival_ms: int
    ) -> None:
        """Make one put's records visible: ``(log, records, sizes)`` per touched shard.

        Called by ``put`` with ``self._lock`` held. A hook: ``LocalLog`` first writes
        the records to disk (releasing the lock around the I/O; it serialises puts
        itself) and appends them here only once they are durable.
        """
        for log, records, sizes in pending:
            log.append(records, sizes, arrival_ms)

    def _conform(self, table: pa.Table, key_type: pa.DataType) -> pa.Table:
        """Check a put against the stream's schema (set by the first put); reorder columns."""
        known = self._payload_schema
        if known is not None and key_type == self._key_type and table.schema.equals(known):
            return table  # the usual case, without building a schema (equals ignores metadata)
        schema = pa.schema([f.remove_metadata() for f in table.schema]).remove_metadata()
        if self._payload_schema is None or self._key_type is None:
            self._payload_schema, self._key_type = schema, key_type
            return table
        if key_type != self._key_type:
            raise InvalidRecordsError(
                f"key type {key_type} differs from this stream's key type {self._key_type}"
            )
        if schema.equals(self._payload_schema):
            return table
        expected = {f.name: f.type for f in self._payload_schema}
        got = {f.name: f.type for f in schema}
        if expected == got:
            return table.select(self._payload_schema.names)
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        changed = sorted(n for n in set(expected) & set(got) if expected[n] != got[n])
        details = []
        if missing:
            details.append(f"missing columns {missing}")
        if extra:
            details.append(f"unexpected columns {extra}")
        for name in changed:
            details.append(f"column {name!r} is {got[name]}, expected {expected[name]}")
        raise InvalidRecordsError(
            "records do not match this stream's schema: " + "; ".join(details)
        )

    def _expire_locked(self, now_ms: int) -> None:
        cutoff = now_ms - int(self.retention * 1000)
        for log in self._logs.values():
            log.expire(cutoff)

    # -- lifecycle ---------------------------------------------------------------

    def close(self) -> None:
        """Refuse further puts. Records already stored stay readable."""
        self._closed = True

    def __enter__(self) -> MemoryStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return sum(len(log) for log in self._logs.values())

    def __repr__(self) -> str:
        return f"MemoryStream(name={self.name!r}, shards={len(self._open)}, records={len(self)})"
