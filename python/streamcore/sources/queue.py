"""SQS-style queues: ``MemoryQueue`` (and the parts ``LocalQueue`` shares with it).

A queue holds messages, not records: each is received by one consumer at a
time, stays invisible for the visibility timeout, and is deleted once
handled; otherwise it comes back, and after ``max_receive_count`` receives it
moves to the ``dead_letter`` queue (SEMANTICS 3). FIFO queues keep order per
message group, deliver nothing newer of a group while one of its messages is
in flight, and drop duplicate sends within a 5-minute deduplication window.

``MemoryQueue`` keeps each send's payload as one Arrow chunk and every message's
state in the native ``QueueCore`` (``streamcore._queue``), so receives,
deletes and visibility timers never loop over messages in Python.

Both queue classes offer the same private surface to ``QueueConsumer``:
``_take`` (receive a batch, plus any messages to redrive), ``_settle``
(delete a received batch, except the messages reported failed),
``_release``, ``_send_dead``, ``_receivable``, ``_next_due``, ``_locate``.
"""

from __future__ import annotations

import hashlib
import math
import threading
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from streamcore import _arrow, _queue
from streamcore.clock import SYSTEM_CLOCK, Clock
from streamcore.errors import ConfigError, InvalidRecordsError
from streamcore.sources.ingest import to_table

SENT_TYPE = pa.timestamp("ms", tz="UTC")
RECEIVE_COUNT = pa.field("receive_count", pa.int64())
DEDUP_WINDOW = 300.0  # seconds a FIFO deduplication id is remembered (SQS: 5 minutes)
SYSTEM_COLUMNS = ("message_id", "group_id", "receive_count", "sent")
SendListener = Callable[[Any, list[int]], None]


_ONES: list[pa.Array] = [_queue.constant_int64(1, 4096)]


def _ones(n: int) -> pa.Array:
    """``n`` ones (int64), sliced from one shared buffer: the receive count of a first delivery."""
    if len(_ONES[0]) < n:
        _ONES[0] = _queue.constant_int64(1, max(n, 2 * len(_ONES[0])))
    return _ONES[0].slice(0, n)


def _to_table(data: Any) -> pa.Table:
    """``to_table`` with a fast path for lists of bytes/str bodies (one conversion, no Python loop)."""
    if isinstance(data, (list, tuple)) and data and isinstance(data[0], (bytes, bytearray, str)):
        try:
            body = pa.array(data, pa.binary())
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            body = None
        if body is not None and not body.null_count:
            return pa.table({"body": body})
    return to_table(data, payload_column="body")  # also reports what is wrong with the input


def new_prefix() -> bytes:
    """A random UUID's first four groups: every message id of a queue starts with them."""
    return str(uuid.uuid4())[:24].encode()


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _seconds(name: str, value: object, low: float, high: float) -> float:
    if not _number(value) or not low <= float(value) <= high:  # type: ignore[arg-type]
        raise ConfigError(name, value, f"seconds in {low:g}..{high:g}")
    return float(value)  # type: ignore[arg-type]


@dataclass(slots=True)
class DeadLetters:
    """Messages taken out of a queue by redrive, on their way to its dead-letter queue."""

    payload: pa.Table  # the payload columns, as sent
    group_ids: list[str] | None  # FIFO: each message's group
    dedup_ids: list[str] | None  # FIFO: the original message ids (unique)
    count: int
    # LocalQueue: what to delete once the dead-letter queue has them; MemoryQueue: the
    # seconds to wait before trying again if it refuses them.
    receipt: Any = None


def merge_dead_letters(parts: list[DeadLetters], receipt: Any) -> DeadLetters:
    """One hand-over of several redrives, in order."""
    if len(parts) == 1:
        return DeadLetters(parts[0].payload, parts[0].group_ids, parts[0].dedup_ids, parts[0].count, receipt)
    fifo = parts[0].group_ids is not None
    return DeadLetters(
        pa.concat_tables([p.payload for p in parts]),
        [g for p in parts for g in p.group_ids or ()] if fifo else None,
        [i for p in parts for i in p.dedup_ids or ()] if fifo else None,
        sum(p.count for p in parts),
        receipt,
    )


@dataclass(slots=True)
class Received:
    """One receive: the batch handed to a handler, and its receipt for settling it.

    The receipt is the messages' indices and the receive counts they were
    received with: ``indices`` None means the consecutive indices
    ``first_index .. last_index``, ``counts`` None means ``attempt`` for all.
    """

    records: pa.RecordBatch | None  # None when the receive only found messages to redrive
    n: int
    first_index: int
    last_index: int
    indices: pa.Int64Array | None
    counts: pa.Int64Array | None
    attempt: int  # the highest receive count in the batch
    first_receives: int  # messages received for the first time
    last_sent_ms: int
    dead: DeadLetters | None = None
    backlog: bool = False  # visible messages remained after this receive
    extra: Any = None  # the queue's own bookkeeping (LocalQueue: the payload chunks involved)

    def __len__(self) -> int:
        return self.n


@dataclass(slots=True)
class Prepared:
    """A send's input, checked and converted."""

    payload: pa.RecordBatch  # payload columns (FIFO: plus the group_id column, last)
    groups: pa.Array | None  # FIFO: utf8 group of every message
    dedup: list[Any] | None  # FIFO: deduplication key of every message

    @property
    def num_rows(self) -> int:
        return int(self.payload.num_rows)


class QueueBase:
    """Options, clocks, listeners and input handling shared by ``MemoryQueue`` and ``LocalQueue``."""

    def __init__(
        self,
        *,
        name: str,
        fifo: bool,
        visibility_timeout: float,
        max_receive_count: int | None,
        dead_letter: Any,
        delay: float,
        retention: float,
        content_based_dedup: bool,
        clock: Clock | None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError("name", name, "a non-empty string")
        if not isinstance(fifo, bool):
            raise ConfigError("fifo", fifo, "True or False")
        self.name = name
        self.fifo = fifo
        self.visibility_timeout = _seconds("visibility_timeout", visibility_timeout, 0, 43_200)
        self.delay = _seconds("delay", delay, 0, 900)
        self.retention = _seconds("retention", retention, 60, 1_209_600)
        if max_receive_count is not None and (
            not isinstance(max_receive_count, int)
            or isinstance(max_receive_count, bool)
            or not 1 <= max_receive_count <= 1000
        ):
            raise ConfigError("max_receive_count", max_receive_count, "None or an integer in 1..1000")
        if max_receive_count is not None and dead_letter is None:
            raise ConfigError("max_receive_count", max_receive_count, "None unless dead_letter is set")
        if dead_letter is not None:
            if not isinstance(dead_letter, QueueBase):
                raise ConfigError("dead_letter", dead_letter, "None, a MemoryQueue or a LocalQueue")
            if dead_letter is self:
                raise ConfigError("dead_letter", dead_letter, "another queue than this one")
            if dead_letter.fifo != fifo:
                kind = "FIFO" if fifo else "standard"
                raise ConfigError("dead_letter", dead_letter, f"a {kind} queue, like this one")
            if max_receive_count is None:
                raise ConfigError("max_receive_count", None, "an integer in 1..1000 when dead_letter is set")
        if not isinstance(content_based_dedup, bool):
            raise ConfigError("content_based_dedup", content_based_dedup, "True or False")
        if content_based_dedup and not fifo:
            raise ConfigError("content_based_dedup", content_based_dedup, "False for a standard queue")
        self.max_receive_count = max_receive_count
        self.dead_letter = dead_letter
        self.content_based_dedup = content_based_dedup
        self._own_clock = clock
        self._app_clock: Clock | None = None
        self._lock = threading.Lock()
        self._listeners: list[SendListener] = []
        self._closed = False
        self._payload_schema: pa.Schema | None = None
        self._batch_schema: pa.Schema | None = None

    # -- configuration ---------------------------------------------------------

    @property
    def clock(self) -> Clock:
        """The queue's own clock, else the clock of the App it is attached to, else the system clock."""
        return self._own_clock or self._app_clock or SYSTEM_CLOCK

    def _attach(self, clock: Clock, listener: SendListener) -> None:
        with self._lock:
            if self._app_clock is None:
                self._app_clock = clock
            self._listeners.append(listener)
        if self.dead_letter is not None:
            self.dead_letter._adopt_clock(clock)

    def _adopt_clock(self, clock: Clock) -> None:
        """Use ``clock`` if this queue has none yet (a dead-letter queue takes its source's)."""
        with self._lock:
            if self._app_clock is None:
                self._app_clock = clock

    def _detach(self, listener: SendListener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _notify(self) -> None:
        for listener in list(self._listeners):  # outside the lock: listeners take their App's lock
            listener(self, [0])

    # -- input -----------------------------------------------------------------

    def _check_delay(self, delay: float | None) -> float:
        if delay is None:
            return self.delay
        return _seconds("delay", delay, 0, 900)

    def _prepare(
        self,
        data: Any,
        group_id: str | None,
        dedup_id: str | None,
        group_ids: Sequence[Any] | None,
        dedup_ids: Sequence[Any] | None,
    ) -> Prepared:
        """Convert and check a send's input (SEMANTICS 3.4, API.md 'FIFO queues')."""
        payloads = isinstance(data, (list, tuple)) and bool(data) and not isinstance(data[0], dict)
        table = _to_table(data)
        n = table.num_rows
        if n == 0:
            return Prepared(pa.RecordBatch.from_pylist([]), None, None)
        if not self.fifo:
            for option, value in (
                ("group_id", group_id), ("dedup_id", dedup_id), ("group_ids", group_ids),
                ("dedup_ids", dedup_ids),
            ):
                if value is not None:
                    msg = f"{option}= is for FIFO queues; {self.name!r} is a standard queue"
                    raise InvalidRecordsError(msg)
            self._check_reserved(table, ())
            return Prepared(self._conform(table), None, None)
        if group_id is not None and group_ids is not None:
            raise InvalidRecordsError("pass group_id= or group_ids=, not both")
        if dedup_id is not None and dedup_ids is not None:
            raise InvalidRecordsError("pass dedup_id= or dedup_ids=, not both")
        drop: list[str] = []
        groups = self._values(table, "group", group_id, group_ids, payloads, drop)
        if groups is None:
            raise InvalidRecordsError(
                f"FIFO queue {self.name!r} needs a message group for every message: pass group_id= "
                "(a column, or for bytes payloads the group) or group_ids=[...]"
            )
        dedup_col = self._values(table, "dedup", dedup_id, dedup_ids, payloads, drop)
        if drop:
            table = table.drop_columns(drop)
        self._check_reserved(table, ())
        if dedup_col is not None:
            dedup: list[Any] = dedup_col.to_pylist()
        elif self.content_based_dedup:
            dedup = self._content_keys(table)
        else:
            raise InvalidRecordsError(
                f"FIFO queue {self.name!r} needs a deduplication id for every message: pass dedup_id= "
                "or dedup_ids=, or create the queue with content_based_dedup=True"
            )
        payload = self._conform(table)
        payload = pa.RecordBatch.from_arrays(
            [*payload.columns, groups], names=[*payload.schema.names, "group_id"]
        )
        assert payload.num_rows == n
        return Prepared(payload, groups, dedup)

    def _values(
        self,
        table: pa.Table,
        what: str,
        name: str | None,
        explicit: Sequence[Any] | None,
        payloads: bool,
        drop: list[str],
    ) -> pa.Array | None:
        """The group ids or deduplication ids of a FIFO send, as a utf8 array (None: not given)."""
        n = table.num_rows
        default = f"{what}_id"
        if explicit is not None:
            if len(explicit) != n:
                raise InvalidRecordsError(f"{what}_ids= has {len(explicit)} values for {n} messages")
            values = [None if v is None else str(v) for v in explicit]
            column = pa.array(values, pa.string())
        elif name is not None and payloads:
            if not isinstance(name, str) or not name:
                raise InvalidRecordsError(f"{what}_id={name!r} is invalid: expected a non-empty string")
            column = pa.array([name] * n, pa.string())  # bytes payloads: the value itself
        elif name is not None or default in table.column_names:
            col_name = name if name is not None else default
            if col_name not in table.column_names:
                raise InvalidRecordsError(
                    f"{what}_id column {col_name!r} is missing; columns are {table.column_names}"
                )
            chunked = table.column(col_name)
            column = chunked.combine_chunks() if chunked.num_chunks != 1 else chunked.chunk(0)
            if not pa.types.is_string(column.type):
                try:
                    column = column.cast(pa.string())
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise InvalidRecordsError(f"{what}_id column {col_name!r}: {exc}") from None
            if col_name == default:
                drop.append(col_name)
        else:
            return None
        if column.null_count:
            row = pc.index(pc.is_null(column), True).as_py()
            raise InvalidRecordsError(f"{what}_id is null at row {row}", row=row)
        empty = pc.equal(pc.utf8_length(column), 0)
        if pc.any(empty).as_py():
            row = pc.index(empty, True).as_py()
            raise InvalidRecordsError(f"{what}_id is empty at row {row}", row=row)
        return column

    def _content_keys(self, table: pa.Table) -> list[bytes]:
        """Content-based deduplication: SHA-256 of each body (of each row's JSON without one)."""
        if table.column_names == ["body"]:
            bodies = table.column("body").to_pylist()
            return [hashlib.sha256(b if isinstance(b, bytes) else b"").digest() for b in bodies]
        return [hashlib.sha256(orjson.dumps(row, default=str)).digest() for row in table.to_pylist()]

    def _check_reserved(self, table: pa.Table, allowed: Sequence[str]) -> None:
        reserved = SYSTEM_COLUMNS if self.fifo else ("message_id", "receive_count", "sent")
        for name in table.column_names:
            if name in reserved and name not in allowed:
                raise InvalidRecordsError(
                    f"column {name!r} is reserved for the queue's system columns {list(reserved)}; "
                    "rename it before send()"
                )

    def _conform(self, table: pa.Table) -> pa.RecordBatch:
        """One payload schema per queue, fixed by the first send; reorder columns to it."""
        schema = pa.schema([f.remove_metadata() for f in table.schema]).remove_metadata()
        if not table.num_columns:
            raise InvalidRecordsError("a message needs a payload: no columns were given")
        if self._payload_schema is not None and not schema.equals(self._payload_schema):
            expected = {f.name: f.type for f in self._payload_schema}
            got = {f.name: f.type for f in schema}
            if expected != got:
                raise InvalidRecordsError(
                    f"messages do not match queue {self.name!r}'s payload schema: expected "
                    f"{self._payload_schema}, got {schema}"
                )
            table = table.select(self._payload_schema.names)
        batch = table.combine_chunks().to_batches()[0]  # rows > 0: one chunk per column, one batch
        target = self._payload_schema if self._payload_schema is not None else schema
        if not batch.schema.equals(target, check_metadata=True):
            batch = batch.cast(target)  # metadata dropped; nullability as the first send had it
        return batch

    def _set_schema(self, payload: pa.Schema) -> None:
        """Fix the payload schema (first send) and the schema of the batches handlers get."""
        if self._payload_schema is not None:
            return
        self._payload_schema = payload
        fields = [pa.field("message_id", pa.string()), *payload]
        if self.fifo:
            fields.append(pa.field("group_id", pa.string()))
        fields += [RECEIVE_COUNT, pa.field("sent", SENT_TYPE)]
        self._batch_schema = pa.schema(fields)

    def _empty_batch(self) -> pa.RecordBatch:
        schema = self._batch_schema
        if schema is None:
            fields = [pa.field("message_id", pa.string()), pa.field("body", pa.binary())]
            if self.fifo:
                fields.append(pa.field("group_id", pa.string()))
            fields += [pa.field("receive_count", pa.int64()), pa.field("sent", SENT_TYPE)]
            schema = pa.schema(fields)
        return pa.RecordBatch.from_pylist([], schema=schema)

    def _dead_letters(self, rows: pa.RecordBatch, receipt: Any = None) -> DeadLetters:
        """Redriven messages (rows shaped like a handler's batch) as the dead-letter queue gets them."""
        assert self._payload_schema is not None
        payload = pa.Table.from_batches([rows.select(self._payload_schema.names)])
        if not self.fifo:
            return DeadLetters(payload, None, None, rows.num_rows, receipt)
        groups = rows.column("group_id").to_pylist()
        ids = rows.column("message_id").to_pylist()
        return DeadLetters(payload, groups, ids, rows.num_rows, receipt)

    def _send_dead(self, dead: DeadLetters) -> None:
        """Hand redriven messages to the dead-letter queue (call without any App lock held)."""
        target = self.dead_letter
        assert target is not None
        if self.fifo:
            target.send(dead.payload, group_ids=dead.group_ids, dedup_ids=dead.dedup_ids)
        else:
            target.send(dead.payload)

    # -- what consumers and users call (each queue class implements it) -----------

    def send(
        self,
        data: Any,
        *,
        group_id: str | None = None,
        dedup_id: str | None = None,
        group_ids: Sequence[Any] | None = None,
        dedup_ids: Sequence[Any] | None = None,
        delay: float | None = None,
    ) -> list[str]:
        """Send messages; returns their ids, in input order.

        ``data`` is a ``bytes``/``str`` payload, a list of them (stored in a binary
        ``body`` column), a list of dicts, a pyarrow Table/RecordBatch or an
        Arrow PyCapsule exporter. FIFO queues need a message group for every
        message (``group_id``: a column or field name, or for bytes payloads the
        group itself; or ``group_ids=[...]``) and a deduplication id
        (``dedup_id``/``dedup_ids`` likewise, or ``content_based_dedup`` on the
        queue); a column named ``group_id``/``dedup_id`` is used by default. A
        duplicate within 5 minutes returns the first message's id and stores
        nothing. ``delay`` (0..900 s) overrides the queue's delay. Raises
        ``ValueError`` for bad input; nothing of the call is stored then. A
        ``LocalQueue`` returns once the messages are committed to its database.
        """
        self._check_open()
        if isinstance(data, (bytes, bytearray, memoryview, str)):
            data = [data]
        seconds = self._check_delay(delay)
        prepared = self._prepare(data, group_id, dedup_id, group_ids, dedup_ids)
        if prepared.num_rows == 0:
            return []
        with self._lock:
            ids = self._store_locked(prepared, seconds)
        self._notify()
        return ids

    def _store_locked(self, prepared: Prepared, delay: float) -> list[str]:
        """Store a checked send (FIFO: deduplicated) with the queue's lock held; returns the ids."""
        raise NotImplementedError

    def receive(self, max_messages: int = 10, *, visibility_timeout: float | None = None) -> pa.RecordBatch:
        """Receive up to ``max_messages`` (1..10000) visible messages, as SQS ``ReceiveMessage``.

        The batch has the columns a consumer's batch has: ``message_id``, the
        payload, ``group_id`` (FIFO), ``receive_count`` and ``sent``. The messages
        stay invisible for the visibility timeout (this queue's, or
        ``visibility_timeout``); ``delete`` them once handled. Messages past
        ``max_receive_count`` go to the dead-letter queue instead.
        """
        valid = isinstance(max_messages, int) and not isinstance(max_messages, bool)
        if not valid or not 1 <= max_messages <= 10000:
            raise ConfigError("max_messages", max_messages, "an integer in 1..10000")
        visibility = self.visibility_timeout
        if visibility_timeout is not None:
            visibility = _seconds("visibility_timeout", visibility_timeout, 0, 43_200)
        got = self._take(max_messages, visibility)
        if got is None:
            return self._empty_batch()
        if got.dead is not None:
            self._send_dead(got.dead)
        return got.records if got.records is not None else self._empty_batch()

    def delete(self, message_ids: Any) -> int:
        raise NotImplementedError

    def counts(self) -> dict[str, int]:
        raise NotImplementedError

    def _take(self, max_n: int, visibility: float, max_bytes: int = 0) -> Received | None:
        """Receive up to ``max_n`` messages (and take out those to redrive); None when there were none."""
        raise NotImplementedError

    def _settle(self, received: Received, failed: Sequence[int] | None = None) -> int:
        """Delete a received batch by its receipt, except the positions ``failed``; returns deletes."""
        raise NotImplementedError

    def _release(self, received: Received) -> None:
        """Make a received batch visible again at once (a stop without drain)."""
        raise NotImplementedError

    def _locate(self, received: Received, ids: Sequence[Any]) -> list[int]:
        """Position of each message id in a received batch (-1: not in it)."""
        raise NotImplementedError

    def _receivable(self) -> bool:
        """Whether a receive now would get (or redrive) a message."""
        raise NotImplementedError

    def _visible(self) -> int:
        """Visible messages now."""
        raise NotImplementedError

    def _next_due(self) -> float:
        """Clock time of the next delay or visibility deadline after now (inf: none)."""
        raise NotImplementedError

    def _oldest_sent_ms(self) -> int | None:
        """Send time of the oldest message not yet deleted (epoch ms), or None."""
        raise NotImplementedError

    def _flush(self) -> None:
        """Make deletes that ``_settle`` deferred durable now (a no-op where none are deferred)."""

    # -- lifecycle -------------------------------------------------------------

    def close(self) -> None:
        """Refuse further sends. Messages already stored can still be received."""
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidRecordsError(f"queue {self.name!r} is closed")


class MemoryQueue(QueueBase):
    """An SQS-like queue in memory: standard (at-least-once, unordered) or FIFO.

    Parameters
    ----------
    name : str
        Name reported in ``Batch.source`` and metrics.
    fifo : bool
        FIFO queue: order per message group, one batch per group in flight,
        deduplication of sends within 5 minutes.
    visibility_timeout : float
        Seconds 0..43200 a received message stays invisible (default 30).
    max_receive_count : int, optional
        1..1000: a message whose receive count would exceed it moves to
        ``dead_letter`` instead of being delivered. Needs ``dead_letter``.
    dead_letter : MemoryQueue or LocalQueue, optional
        The dead-letter queue (of the same kind, standard or FIFO).
    delay : float
        Seconds 0..900 a sent message stays invisible (default 0).
    retention : float
        Seconds 60..1209600 after its send at which a message is dropped (default 4 days).
    content_based_dedup : bool
        FIFO: deduplicate by SHA-256 of the body when a send gives no ``dedup_id``.
    clock : Clock, optional
        Stamps ``sent`` and runs delays, visibility timeouts and the dedup window.
        Without one, the clock of the App it is attached to.

    Every method is thread-safe.
    """

    def __init__(
        self,
        *,
        name: str = "queue",
        fifo: bool = False,
        visibility_timeout: float = 30.0,
        max_receive_count: int | None = None,
        dead_letter: Any = None,
        delay: float = 0.0,
        retention: float = 345_600.0,
        content_based_dedup: bool = False,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(
            name=name,
            fifo=fifo,
            visibility_timeout=visibility_timeout,
            max_receive_count=max_receive_count,
            dead_letter=dead_letter,
            delay=delay,
            retention=retention,
            content_based_dedup=content_based_dedup,
            clock=clock,
        )
        self._prefix = new_prefix()
        self._core = _queue.QueueCore(fifo, self.retention, self._prefix)
        self._chunks: dict[int, pa.RecordBatch] = {}  # first index -> that send's messages
        self._last_sent_ms = -(2**62)
        # FIFO: message groups by name (native index), reused once empty; dedup window.
        self._group_index: dict[str, int] = {}
        self._group_names: dict[int, str] = {}
        self._free_groups: list[int] = []
        self._dedup: dict[Any, tuple[int, float]] = {}
        self._dedup_order: deque[tuple[float, Any]] = deque()
        # Redriven messages the dead-letter queue refused: (retry at, messages). The
        # native core has let go of them, so this queue holds them until the send works.
        self._dead_waiting: list[tuple[float, DeadLetters]] = []

    # -- sending ---------------------------------------------------------------

    def _store_locked(self, prepared: Prepared, delay: float) -> list[str]:
        n = prepared.num_rows
        if n == 0:
            return []
        now = self.clock.now()
        core = self._core
        payload = prepared.payload
        duplicates: dict[int, int] = {}  # row -> index of the message it duplicates
        if self.fifo:
            assert prepared.dedup is not None
            duplicates = self._deduplicate_locked(prepared.dedup, now)
            if duplicates:
                keep = [row not in duplicates for row in range(n)]
                payload = payload.filter(pa.array(keep))
        m = payload.num_rows
        if m:
            last = payload.num_columns - 1
            self._set_schema(payload.schema.remove(last) if self.fifo else payload.schema)
            groups = self._group_indices_locked(payload.column(last)) if self.fifo else None
            first = core.end
            sent_ms = max(int(now * 1000), self._last_sent_ms)  # as the core stamps them
            self._last_sent_ms = sent_ms
            # Stored the way handlers see it: a first delivery is a zero-copy slice.
            chunk = pa.RecordBatch.from_arrays(
                [
                    _queue.index_ids(self._prefix, first, m),
                    *payload.columns,
                    _ones(m),
                    _queue.constant_int64(sent_ms, m).view(SENT_TYPE),
                ],
                schema=self._batch_schema,
            )
            if core.append(m, now, delay, groups, _arrow.row_nbytes(payload)) != first:
                raise AssertionError("queue core out of step")
            self._chunks[first] = chunk
        else:
            first = core.end
        if not duplicates:
            return core.ids(first, n)
        ids: list[str] = []
        next_index = first
        for row in range(n):
            if row in duplicates:
                ids.append(core.ids(duplicates[row], 1)[0])
            else:
                ids.append(core.ids(next_index, 1)[0])
                next_index += 1
        return ids

    def _deduplicate_locked(self, keys: list[Any], now: float) -> dict[int, int]:
        """Rows that repeat a deduplication id seen within the window, with the original's index."""
        order = self._dedup_order
        table = self._dedup
        while order and order[0][0] <= now:
            expires, key = order.popleft()
            if table.get(key, (0, 0.0))[1] == expires:
                del table[key]
        duplicates: dict[int, int] = {}
        next_index = self._core.end
        expires = now + DEDUP_WINDOW
        for row, key in enumerate(keys):
            hit = table.get(key)
            if hit is not None and hit[1] > now:
                duplicates[row] = hit[0]
                continue
            table[key] = (next_index, expires)
            order.append((expires, key))
            next_index += 1
        return duplicates

    def _group_indices_locked(self, groups: pa.Array) -> pa.Array:
        """Native group index of every message's group name (new groups get free slots)."""
        for g in self._core.take_freed_groups():
            name = self._group_names.pop(g)
            del self._group_index[name]
            self._free_groups.append(g)
        encoded = groups.dictionary_encode()
        mapping = []
        for name in encoded.dictionary.to_pylist():
            known = self._group_index.get(name)
            if known is None:
                g = self._free_groups.pop() if self._free_groups else len(self._group_names)
                while g in self._group_names:  # never hand out a slot in use
                    g += 1
                self._group_index[name] = g
                self._group_names[g] = name
            else:
                g = known
            mapping.append(g)
        return pa.array(mapping, pa.int32()).take(encoded.indices)

    # -- receiving -------------------------------------------------------------

    def _take(self, max_n: int, visibility: float, max_bytes: int = 0) -> Received | None:
        """Receive a batch natively; None when nothing was received or redriven."""
        core = self._core
        with self._lock:
            (
                n, first, last, indices, counts, attempt, last_sent, first_receives, chunk, offset, redriven,
            ) = core.receive(max_n, self.clock.now(), visibility, self.max_receive_count or 0, max_bytes)
            dead = None
            if redriven is not None:
                dead = self._dead_letters(self._gather_locked(redriven), visibility)
            dead = self._due_dead_locked(dead, visibility)
            if not n:
                self._collect_locked()
                if dead is None:
                    return None
                return Received(None, 0, -1, -1, None, None, 0, 0, 0, dead)
            if chunk >= 0:  # a first delivery, consecutive within one send: zero-copy
                records = self._chunks[chunk].slice(offset, n)
            else:
                if indices is None:
                    indices = core.batch_columns(first, n, None, None, attempt)[0]
                records = self._gather_locked(indices)
            self._collect_locked()
            backlog = core.n_visible > 0
        if attempt != 1:  # the stored receive counts are those of a first delivery
            column = counts if counts is not None else _queue.constant_int64(attempt, n)
            records = records.set_column(records.num_columns - 2, RECEIVE_COUNT, column)
        return Received(
            records, n, first, last, indices, counts, attempt, first_receives, last_sent, dead, backlog
        )

    def _gather_locked(self, indices: pa.Int64Array) -> pa.RecordBatch:
        """The stored rows of ascending ``indices`` (slices where consecutive in one send)."""
        parts = []
        for chunk_first, position, count, first in self._core.segments(indices):
            chunk = self._chunks[chunk_first]
            if first >= 0:
                parts.append(chunk.slice(first - chunk_first, count))
            else:
                offsets = pc.subtract(indices.slice(position, count), pa.scalar(chunk_first, pa.int64()))
                parts.append(chunk.take(offsets))
        return parts[0] if len(parts) == 1 else pa.concat_batches(parts)

    def _due_dead_locked(self, dead: DeadLetters | None, visibility: float) -> DeadLetters | None:
        """``dead`` plus the refused redrives whose retry time has come (their retry delay is reset)."""
        now = self.clock.now()
        due = [d for at, d in self._dead_waiting if at <= now]
        if not due:
            return dead
        self._dead_waiting = [(at, d) for at, d in self._dead_waiting if at > now]
        if dead is not None:
            due.append(dead)
        return merge_dead_letters(due, visibility)

    def _send_dead(self, dead: DeadLetters) -> None:
        """Hand redriven messages over; if that fails keep them, to try again after the visibility timeout."""
        try:
            super()._send_dead(dead)
        except BaseException:
            with self._lock:
                self._dead_waiting.append((self.clock.now() + dead.receipt, dead))
            raise

    def _collect_locked(self) -> None:
        """Drop the payload of chunks whose messages are all gone."""
        for chunk_first in self._core.take_dead_chunks():
            del self._chunks[chunk_first]

    def _settle(self, received: Received, failed: Sequence[int] | None = None) -> int:
        """Delete a received batch, except the messages at positions ``failed``; returns deletes."""
        skip = None
        if failed:
            mask = bytearray(received.n)
            for position in failed:
                mask[position] = 1
            skip = bytes(mask)
        r = received
        with self._lock:
            deleted = self._core.settle(r.first_index, r.n, r.indices, r.counts, r.attempt, skip)
            self._collect_locked()
        return int(deleted)

    def _release(self, received: Received) -> None:
        """A batch that will not be handled (stop without drain): visible again at once."""
        if not received.n:
            return
        r = received
        with self._lock:
            self._core.release(r.first_index, r.n, r.indices, r.counts, r.attempt, self.clock.now())

    def _locate(self, received: Received, ids: Sequence[Any]) -> list[int]:
        """Position of each id in the batch (-1: not an id of this batch)."""
        wanted = self._core.parse(list(ids), False)
        r = received
        return self._core.positions(wanted, r.first_index, r.n, r.indices)

    def _receivable(self) -> bool:
        with self._lock:
            now = self.clock.now()
            if any(at <= now for at, _ in self._dead_waiting):
                return True
            return bool(self._core.receivable(now))

    def _visible(self) -> int:
        with self._lock:
            return int(self._core.counts(self.clock.now())[0])

    def _next_due(self) -> float:
        with self._lock:
            due = float(self._core.next_due(self.clock.now()))
            return min([due, *(at for at, _ in self._dead_waiting)])

    def _oldest_sent_ms(self) -> int | None:
        with self._lock:
            self._core.advance(self.clock.now())
            return self._core.oldest_sent_ms()

    # -- the rest of the SQS surface ---------------------------------------------

    def delete(self, message_ids: Any) -> int:
        """Delete messages by id (a str, a list of them, or a string array); returns how many.

        Deleting a message that is already gone is a no-op; an id that is not of
        this queue raises ``ValueError``.
        """
        indices = self._parse(message_ids)
        with self._lock:
            self._core.advance(self.clock.now())
            deleted = self._core.delete(indices)
            self._collect_locked()
        return int(deleted)

    def change_visibility(self, message_ids: Any, timeout: float) -> int:
        """Messages in flight become visible ``timeout`` seconds from now (0: at once); returns how many."""
        seconds = _seconds("timeout", timeout, 0, 43_200)
        indices = self._parse(message_ids)
        with self._lock:
            changed = self._core.change_visibility(indices, None, seconds, self.clock.now())
        if changed and seconds == 0:
            self._notify()
        return int(changed)

    def _parse(self, message_ids: Any) -> pa.Int64Array:
        if isinstance(message_ids, str):
            message_ids = [message_ids]
        elif isinstance(message_ids, (pa.Array, pa.ChunkedArray)):
            message_ids = message_ids.to_pylist()
        return self._core.parse(list(message_ids), True)

    def counts(self) -> dict[str, int]:
        """``{"visible", "in_flight", "delayed"}`` message counts now."""
        with self._lock:
            visible, in_flight, delayed = self._core.counts(self.clock.now())
        return {"visible": visible, "in_flight": in_flight, "delayed": delayed}

    def __enter__(self) -> MemoryQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        """Messages not yet deleted, redriven or expired (visible, in flight or delayed).

        Redriven messages that the dead-letter queue refused count too: they stay
        here until a retry hands them over.
        """
        with self._lock:
            self._core.advance(self.clock.now())
            return len(self._core) + sum(d.count for _, d in self._dead_waiting)

    def __repr__(self) -> str:
        kind = "FIFO" if self.fifo else "standard"
        return f"MemoryQueue(name={self.name!r}, {kind}, messages={len(self)})"
