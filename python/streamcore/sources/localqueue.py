"""``LocalQueue``: ``MemoryQueue`` semantics, durable, in one SQLite file (WAL mode).

The database is the queue: every send, receive and delete is one SQLite
transaction, so several processes may send to and receive from the same file
at once, and whatever a call acknowledged survives a ``kill -9`` of any of
them. Layout::

    meta      (key, value)     format, version, the message id prefix, fifo,
                               next_idx (never reused), the payload schema
    chunks    (first, count, payload)
                               one row per send: its payload (FIFO: plus the
                               group column) as an Arrow IPC stream
    messages  (idx, chunk, visible_at, rc, sent_ms, grp)
                               one row per message not yet deleted, redriven
                               or expired; visible_at is the clock time from
                               which it may be received (send time + delay,
                               or the visibility deadline of its last
                               receive); rc its receive count
    dedup     (key, idx, expires)
                               FIFO: deduplication ids seen in the last 5 minutes

A receive sets ``visible_at`` to its deadline and increments ``rc`` in the same
transaction that selects the messages, so a message received and not deleted
reappears after its visibility timeout, after a restart too. A message is
deleted with its receipt (index and receive count), so a handler whose batch
timed out cannot delete a message that another receive got meanwhile. Chunks
are deleted with their last message. Message ids are the same shape as
``MemoryQueue``'s: the queue's prefix (stored in ``meta``) and the index.

Redrive is at-least-once across the two queues: the dead-letter queue gets the
message first, then it is deleted here; a crash in between leaves it to be
redriven again.

A consumer's deletes are group-committed: ``_settle`` (a handled batch) only
queues them, and the next transaction of this queue object -- normally the
receive of the next batch -- carries them, as do every read (``counts``, the
consumer's idle checks) and ``close``. That saves one commit per batch; a
crash before it redelivers the batch (at-least-once). ``delete`` is durable
when it returns.
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from streamcore import _arrow, _queue
from streamcore.clock import Clock
from streamcore.errors import ConfigError, InvalidRecordsError, StreamcoreError
from streamcore.sources.queue import (
    DEDUP_WINDOW,
    SENT_TYPE,
    DeadLetters,
    Prepared,
    QueueBase,
    Received,
    _seconds,
    new_prefix,
)

FORMAT = "streamcore.localqueue"
VERSION = 1
FSYNC_MODES = {"always": "FULL", "never": "NORMAL"}
CHUNK_CACHE = 256  # decoded chunks kept per process
EXPIRE_EVERY = 1.0  # clock seconds between two retention sweeps
EXPIRE_SCAN = 10_000  # oldest messages a sweep looks at
FIFO_PAGE = 1000
CHUNK_SWEEP = 32  # chunks collected before a sweep deletes the empty ones
PENDING_MAX = 10_000  # deferred deletes are flushed by the next transaction, or at this many

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB);
CREATE TABLE IF NOT EXISTS chunks (first INTEGER PRIMARY KEY, count INTEGER NOT NULL, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    idx INTEGER PRIMARY KEY,
    chunk INTEGER NOT NULL,
    visible_at REAL NOT NULL,
    rc INTEGER NOT NULL,
    sent_ms INTEGER NOT NULL,
    grp TEXT
);
CREATE INDEX IF NOT EXISTS messages_visible ON messages (visible_at);
CREATE TABLE IF NOT EXISTS dedup (key BLOB PRIMARY KEY, idx INTEGER NOT NULL, expires REAL NOT NULL);
"""

INSERT_RANGE = """
WITH RECURSIVE s(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < ?2)
INSERT INTO messages (idx, chunk, visible_at, rc, sent_ms, grp) SELECT i, ?1, ?3, 0, ?4, NULL FROM s
"""
DROP_EMPTY_CHUNK = """
DELETE FROM chunks WHERE first = ?1
AND NOT EXISTS (SELECT 1 FROM messages WHERE idx >= ?1 AND idx < ?1 + chunks.count)
"""


class QueueStorageError(StreamcoreError, OSError):
    """The queue's SQLite file cannot be opened or is not a streamcore queue."""


def _runs(indices: Sequence[int], counts: Sequence[int]) -> list[tuple[int, int, int]]:
    """``(first, last, rc)`` of each run of consecutive ascending indices with one receive count."""
    n = len(indices)
    if n and indices[-1] - indices[0] == n - 1 and min(counts) == max(counts):
        return [(indices[0], indices[-1], counts[0])]  # the usual case: one run
    out: list[tuple[int, int, int]] = []
    for idx, rc in zip(indices, counts, strict=True):
        if out and out[-1][1] + 1 == idx and out[-1][2] == rc:
            out[-1] = (out[-1][0], idx, rc)
        else:
            out.append((idx, idx, rc))
    return out


class LocalQueue(QueueBase):
    """A durable SQS-like queue in a SQLite file; several processes may use it at once.

    Parameters
    ----------
    path : str or Path
        The SQLite file (created if missing; ``-wal``/``-shm`` files sit beside it).
    name : str, optional
        Name reported in ``Batch.source`` (default: the file name without suffix).
    fsync : {"always", "never"}
        ``"always"``: every call returns once its transaction is fsynced (survives
        a power loss). ``"never"``: committed transactions reach the OS but are
        not fsynced (SQLite ``synchronous=NORMAL``): they survive a crash of any
        process, not of the machine.

    The other parameters are those of ``MemoryQueue``; ``fifo`` must match the file.
    A consumer on the system clock looks for messages other processes sent at
    least every 0.1 s while it has something pending, and every 0.05 s otherwise.
    """

    polls = True  # other processes may send: consumers on the system clock poll

    def __init__(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        fifo: bool = False,
        visibility_timeout: float = 30.0,
        max_receive_count: int | None = None,
        dead_letter: Any = None,
        delay: float = 0.0,
        retention: float = 345_600.0,
        content_based_dedup: bool = False,
        clock: Clock | None = None,
        fsync: str = "always",
    ) -> None:
        path = Path(path)
        super().__init__(
            name=name if name is not None else path.stem,
            fifo=fifo,
            visibility_timeout=visibility_timeout,
            max_receive_count=max_receive_count,
            dead_letter=dead_letter,
            delay=delay,
            retention=retention,
            content_based_dedup=content_based_dedup,
            clock=clock,
        )
        if fsync not in FSYNC_MODES:
            raise ConfigError("fsync", fsync, "'always' or 'never'")
        self.path = path
        self.fsync = fsync
        self._chunk_cache: collections.OrderedDict[int, pa.RecordBatch] = collections.OrderedDict()
        self._expired_at = float("-inf")
        self._pruned_at = float("-inf")
        self._pending: list[tuple[int, int]] = []  # (idx, rc) receipts of deferred deletes
        self._pending_chunks: set[int] = set()
        self._sweep: set[int] = set()  # chunks that may have lost their last message
        try:
            db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=60.0)
        except sqlite3.Error as exc:
            raise QueueStorageError(f"cannot open queue file {str(path)!r}: {exc}") from exc
        self._db = db
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={FSYNC_MODES[fsync]}")
            db.execute("PRAGMA busy_timeout=60000")
            self._prefix = self._open_meta()
        except sqlite3.DatabaseError as exc:
            db.close()
            raise QueueStorageError(f"{str(path)!r} is not a usable queue file: {exc}") from exc
        except BaseException:
            db.close()
            raise

    def _open_meta(self) -> bytes:
        db = self._db
        with self._transaction():
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            # Chunks whose messages are all gone (a crash can leave some between sweeps).
            db.execute(
                "DELETE FROM chunks WHERE NOT EXISTS "
                "(SELECT 1 FROM messages WHERE idx >= chunks.first AND idx < chunks.first + chunks.count)"
            )
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                meta = {
                    "format": FORMAT,
                    "version": VERSION,
                    "prefix": new_prefix().decode(),
                    "fifo": int(self.fifo),
                    "next_idx": 0,
                }
                db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", list(meta.items()))
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise QueueStorageError(
                f"{str(self.path)!r} is not a {FORMAT} v{VERSION} file (format {meta.get('format')!r})"
            )
        if bool(meta["fifo"]) != self.fifo:
            kind = "FIFO" if meta["fifo"] else "standard"
            allowed = f"{bool(meta['fifo'])}: {str(self.path)!r} holds a {kind} queue"
            raise ConfigError("fifo", self.fifo, allowed)
        if "schema" in meta:
            self._set_schema(pa.ipc.read_schema(pa.py_buffer(meta["schema"])))
        return str(meta["prefix"]).encode()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    # -- sending ---------------------------------------------------------------

    def _store_locked(self, prepared: Prepared, delay: float) -> list[str]:
        db = self._db
        n = prepared.num_rows
        payload = prepared.payload
        now = self.clock.now()
        sent_ms = int(now * 1000)
        with self._transaction():
            self._sync_schema_locked(payload)
            first = int(db.execute("SELECT value FROM meta WHERE key = 'next_idx'").fetchone()[0])
            duplicates: dict[int, int] = {}
            if self.fifo:
                assert prepared.dedup is not None
                duplicates = self._deduplicate_locked(prepared.dedup, first, now)
                if duplicates:
                    payload = payload.filter(pa.array([row not in duplicates for row in range(n)]))
            m = payload.num_rows
            if m:
                db.execute(
                    "INSERT INTO chunks (first, count, payload) VALUES (?, ?, ?)", (first, m, _ipc(payload))
                )
                visible_at = now + delay
                if self.fifo:
                    groups = payload.column(payload.num_columns - 1).to_pylist()
                    db.executemany(
                        "INSERT INTO messages (idx, chunk, visible_at, rc, sent_ms, grp) "
                        "VALUES (?, ?, ?, 0, ?, ?)",
                        [(first + k, first, visible_at, sent_ms, g) for k, g in enumerate(groups)],
                    )
                else:
                    db.execute(INSERT_RANGE, (first, first + m, visible_at, sent_ms))
                db.execute("UPDATE meta SET value = ? WHERE key = 'next_idx'", (first + m,))
        if m:
            self._cache_put(first, payload)
        if not duplicates:
            return _queue.id_list(self._prefix, first, n)
        ids: list[str] = []
        next_index = first
        for row in range(n):
            index = duplicates.get(row)
            if index is None:
                index = next_index
                next_index += 1
            ids.append(_queue.id_list(self._prefix, index, 1)[0])
        return ids

    def _load_schema_locked(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None:
            raise QueueStorageError(f"queue {self.name!r} holds messages but no payload schema")
        self._set_schema(pa.ipc.read_schema(pa.py_buffer(row[0])))

    def _sync_schema_locked(self, payload: pa.RecordBatch) -> None:
        """One payload schema per queue, across processes: the first send stores it in ``meta``."""
        schema = payload.schema.remove(payload.num_columns - 1) if self.fifo else payload.schema
        if self._payload_schema is None:
            if self._db.execute("SELECT 1 FROM meta WHERE key = 'schema'").fetchone() is None:
                self._db.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema', ?)", (schema.serialize().to_pybytes(),)
                )
                self._set_schema(schema)
                return
            self._load_schema_locked()
        assert self._payload_schema is not None
        if not schema.equals(self._payload_schema):
            raise InvalidRecordsError(
                f"messages do not match queue {self.name!r}'s payload schema: expected "
                f"{self._payload_schema}, got {schema}"
            )

    def _deduplicate_locked(self, keys: list[Any], first: int, now: float) -> dict[int, int]:
        db = self._db
        if now - self._pruned_at >= 10.0:
            db.execute("DELETE FROM dedup WHERE expires <= ?", (now,))
            self._pruned_at = now
        duplicates: dict[int, int] = {}
        seen: dict[Any, int] = {}
        next_index = first
        fresh = []
        for row, key in enumerate(keys):
            blob = key if isinstance(key, bytes) else str(key).encode()
            if blob in seen:
                duplicates[row] = seen[blob]
                continue
            hit = db.execute("SELECT idx, expires FROM dedup WHERE key = ?", (blob,)).fetchone()
            if hit is not None and hit[1] > now:
                duplicates[row] = int(hit[0])
                continue
            seen[blob] = next_index
            fresh.append((blob, next_index, now + DEDUP_WINDOW))
            next_index += 1
        db.executemany("INSERT OR REPLACE INTO dedup (key, idx, expires) VALUES (?, ?, ?)", fresh)
        return duplicates

    # -- payloads --------------------------------------------------------------

    def _cache_put(self, first: int, payload: pa.RecordBatch) -> None:
        cache = self._chunk_cache
        cache[first] = payload
        if len(cache) > CHUNK_CACHE:
            cache.popitem(last=False)

    def _chunk_locked(self, first: int) -> pa.RecordBatch:
        cache = self._chunk_cache
        batch = cache.get(first)
        if batch is not None:
            cache.move_to_end(first)
            return batch
        row = self._db.execute("SELECT payload FROM chunks WHERE first = ?", (first,)).fetchone()
        if row is None:
            raise QueueStorageError(f"queue {self.name!r}: the payload of messages from {first} is missing")
        with pa.ipc.open_stream(pa.py_buffer(row[0])) as reader:
            batch = reader.read_next_batch()
        self._cache_put(first, batch)
        return batch

    def _payload_locked(self, rows: Sequence[tuple[int, int]]) -> pa.RecordBatch:
        """Payload of ``(idx, chunk)`` rows, ascending by idx."""
        parts = []
        start = 0
        while start < len(rows):
            chunk = rows[start][1]
            end = start
            while end < len(rows) and rows[end][1] == chunk:
                end += 1
            batch = self._chunk_locked(chunk)
            first, last = rows[start][0], rows[end - 1][0]
            if last - first == end - 1 - start:
                parts.append(batch.slice(first - chunk, end - start))
            else:
                offsets = pa.array([rows[k][0] - chunk for k in range(start, end)], pa.int64())
                parts.append(batch.take(offsets))
            start = end
        return parts[0] if len(parts) == 1 else pa.concat_batches(parts)

    # -- receiving -------------------------------------------------------------

    def _expire_locked(self, now: float) -> None:
        """Retention: drop the oldest messages sent more than ``retention`` ago (at most every second)."""
        if now - self._expired_at < EXPIRE_EVERY:
            return
        self._expired_at = now
        db = self._db
        cutoff = self._cutoff(now)
        oldest = db.execute("SELECT sent_ms FROM messages ORDER BY idx LIMIT 1").fetchone()
        if oldest is None or oldest[0] >= cutoff:
            return
        db.execute(
            "DELETE FROM messages WHERE idx IN (SELECT idx FROM messages ORDER BY idx LIMIT ?) "
            "AND sent_ms < ?",
            (EXPIRE_SCAN, cutoff),
        )
        db.execute(
            "DELETE FROM chunks WHERE first + count <= "
            "(SELECT COALESCE(MIN(idx), (SELECT value FROM meta WHERE key = 'next_idx')) FROM messages)"
        )

    def _cutoff(self, now: float) -> int:
        """Messages sent before this (epoch ms) have expired (as ``QueueCore`` counts it)."""
        return int(now * 1000) - int(self.retention * 1000)

    def _candidates_locked(
        self, now: float, max_n: int, max_rc: int, dry_run: bool
    ) -> tuple[list[tuple[int, int, int, int]], list[tuple[int, int, int, int]]]:
        """Messages to receive and to redrive, as ``(idx, rc, chunk, sent_ms)`` rows.

        Expired messages that the last retention sweep left are skipped like deleted ones.
        """
        db = self._db
        cutoff = self._cutoff(now)
        take: list[tuple[int, int, int, int]] = []
        dead: list[tuple[int, int, int, int]] = []
        if not self.fifo:
            limit = 1 if dry_run else max_n
            skip = 0
            while True:
                rows = db.execute(
                    "SELECT idx, rc, chunk, sent_ms FROM messages "
                    "WHERE visible_at <= ? AND sent_ms >= ? ORDER BY visible_at LIMIT ? OFFSET ?",
                    (now, cutoff, limit, skip),
                ).fetchall()
                for row in rows:
                    (dead if max_rc and row[1] >= max_rc else take).append(row)
                if dry_run or len(rows) < limit or len(take) >= max_n:
                    return take[:max_n], dead
                skip += len(rows)
        # FIFO: a group with a message in flight delivers nothing; in index order,
        # a group's first message that is not visible (delayed) blocks the rest.
        blocked = {
            row[0]
            for row in db.execute(
                "SELECT DISTINCT grp FROM messages WHERE visible_at > ? AND rc > 0 AND sent_ms >= ?",
                (now, cutoff),
            )
        }
        after = -1
        while True:
            rows = db.execute(
                "SELECT idx, rc, chunk, sent_ms, grp, visible_at FROM messages "
                "WHERE idx > ? ORDER BY idx LIMIT ?",
                (after, FIFO_PAGE),
            ).fetchall()
            for idx, rc, chunk, sent, group, visible_at in rows:
                if group in blocked or sent < cutoff:
                    continue
                if visible_at > now:
                    blocked.add(group)
                    continue
                if max_rc and rc >= max_rc:
                    dead.append((idx, rc, chunk, sent))
                else:
                    take.append((idx, rc, chunk, sent))
                if dry_run or len(take) >= max_n:
                    return take, dead
            if len(rows) < FIFO_PAGE:
                return take, dead
            after = rows[-1][0]

    def _take(self, max_n: int, visibility: float, max_bytes: int = 0) -> Received | None:
        """Receive a batch in one transaction; None when nothing was received or redriven."""
        db = self._db
        max_rc = self.max_receive_count or 0
        with self._lock:
            now = self.clock.now()
            deadline = now + visibility
            with self._transaction():
                self._flush_locked()
                self._expire_locked(now)
                take, dead = self._candidates_locked(now, max_n, max_rc, False)
                if not take and not dead:
                    return None
                if self._batch_schema is None:  # another process sent the first messages
                    self._load_schema_locked()
                take.sort()
                payload = None
                if take:
                    payload = self._payload_locked([(r[0], r[2]) for r in take])
                    if max_bytes and len(take) > 1:
                        keep = _fits(payload, max_bytes)
                        if keep < len(take):
                            take = take[:keep]
                            payload = payload.slice(0, keep)
                    for lo, hi, rc in _runs([r[0] for r in take], [r[1] for r in take]):
                        db.execute(
                            "UPDATE messages SET rc = rc + 1, visible_at = ? "
                            "WHERE idx BETWEEN ? AND ? AND rc = ?",
                            (deadline, lo, hi, rc),
                        )
                dead_letters = None
                if dead:
                    dead.sort()
                    # Hidden while on the way to the dead-letter queue; back if that fails.
                    db.executemany(
                        "UPDATE messages SET visible_at = ? WHERE idx = ?", [(deadline, r[0]) for r in dead]
                    )
                    dead_rows = self._records_locked(dead, [r[1] for r in dead])
                    dead_letters = self._dead_letters(dead_rows, [(r[0], r[1]) for r in dead])
        if not take:
            return Received(None, 0, -1, -1, None, None, 0, 0, 0, dead_letters)
        assert payload is not None
        indices = [r[0] for r in take]
        counts = [r[1] + 1 for r in take]
        records = self._records_locked(take, counts, payload)
        # The receipt stays in Python lists (``extra``): only this queue reads it.
        return Received(
            records,
            len(take),
            indices[0],
            indices[-1],
            None,
            None,
            max(counts),
            counts.count(1),
            max(r[3] for r in take),
            dead_letters,
            len(take) == max_n,
            (indices, counts, {r[2] for r in take}),
        )

    def _records_locked(
        self,
        rows: Sequence[tuple[int, int, int, int]],
        counts: Sequence[int],
        payload: pa.RecordBatch | None = None,
    ) -> pa.RecordBatch:
        """``(idx, rc, chunk, sent_ms)`` rows as a handler's batch, with these receive counts."""
        if payload is None:
            payload = self._payload_locked([(r[0], r[2]) for r in rows])
        assert self._batch_schema is not None
        n = len(rows)
        first, last = rows[0][0], rows[-1][0]
        if last - first == n - 1:  # consecutive: the usual case, built natively
            ids = _queue.index_ids(self._prefix, first, n)
        else:
            ids = _queue.format_ids(self._prefix, pa.array([r[0] for r in rows], pa.int64()))
        low, high = min(counts), max(counts)
        rcs = _queue.constant_int64(low, n) if low == high else pa.array(counts, pa.int64())
        sent = [r[3] for r in rows]
        low, high = min(sent), max(sent)
        sent_ms = _queue.constant_int64(low, n) if low == high else pa.array(sent, pa.int64())
        return pa.RecordBatch.from_arrays(
            [ids, *payload.columns, rcs, sent_ms.view(SENT_TYPE)], schema=self._batch_schema
        )

    def _delete_rows_locked(self, rows: Sequence[tuple[int, int]], chunks: set[int]) -> int:
        """Delete ``(idx, rc)`` receipts; the chunks they leave empty go in a later sweep."""
        db = self._db
        cutoff = self._cutoff(self.clock.now())
        before = db.total_changes
        rows = sorted(rows)
        for lo, hi, rc in _runs([r[0] for r in rows], [r[1] for r in rows]):
            db.execute(
                "DELETE FROM messages WHERE idx BETWEEN ? AND ? AND rc = ? AND sent_ms >= ?",
                (lo, hi, rc, cutoff),
            )
        deleted = db.total_changes - before
        self._sweep |= chunks
        if len(self._sweep) >= CHUNK_SWEEP:
            self._sweep_locked()
        return deleted

    def _sweep_locked(self) -> None:
        """Delete the payload chunks left without messages (in bulk: freed pages cost commits)."""
        if self._sweep:
            self._db.executemany(DROP_EMPTY_CHUNK, [(chunk,) for chunk in self._sweep])
            self._sweep = set()

    def _chunks_of_locked(self, indices: Sequence[int]) -> set[int]:
        if not indices:
            return set()
        rows = self._db.execute(
            "SELECT DISTINCT first FROM chunks WHERE first <= ? AND first + count > ?",
            (max(indices), min(indices)),
        ).fetchall()
        return {r[0] for r in rows}

    def _flush_locked(self) -> None:
        """Carry the deferred deletes in the open transaction."""
        if self._pending:
            rows, chunks = self._pending, self._pending_chunks
            self._pending, self._pending_chunks = [], set()
            self._delete_rows_locked(rows, chunks)

    def _flush(self) -> None:
        with self._lock:
            if self._pending and not self._closed:
                with self._transaction():
                    self._flush_locked()

    def _settle(self, received: Received, failed: Sequence[int] | None = None) -> int:
        """Delete a received batch, except the messages at positions ``failed``; returns deletes.

        The delete is deferred to this queue's next transaction (group commit);
        the count is of the receipts still valid now.
        """
        indices, counts, chunks = received.extra
        if failed:
            skip = set(failed)
            rows = [(i, c) for p, (i, c) in enumerate(zip(indices, counts, strict=True)) if p not in skip]
        else:
            rows = list(zip(indices, counts, strict=True))
        if not rows:
            return 0
        with self._lock:
            if self._closed:
                return 0
            cutoff = self._cutoff(self.clock.now())
            valid = 0
            for lo, hi, rc in _runs([r[0] for r in rows], [r[1] for r in rows]):
                valid += self._db.execute(
                    "SELECT COUNT(*) FROM messages WHERE idx BETWEEN ? AND ? AND rc = ? AND sent_ms >= ?",
                    (lo, hi, rc, cutoff),
                ).fetchone()[0]
            self._pending += rows
            self._pending_chunks |= chunks
            if len(self._pending) >= PENDING_MAX:
                with self._transaction():
                    self._flush_locked()
        return int(valid)

    def _release(self, received: Received) -> None:
        """A batch that will not be handled (stop without drain): visible again at once."""
        if received.extra is None:
            return
        indices, counts, _ = received.extra
        with self._lock, self._transaction():
            self._flush_locked()
            now = self.clock.now()
            self._db.executemany(
                "UPDATE messages SET visible_at = ? WHERE idx = ? AND rc = ? AND visible_at > ?",
                [(now, i, c, now) for i, c in zip(indices, counts, strict=True)],
            )

    def _send_dead(self, dead: DeadLetters) -> None:
        """The dead-letter queue gets the messages first; then they are deleted here."""
        super()._send_dead(dead)
        rows = dead.receipt
        with self._lock, self._transaction():
            self._flush_locked()
            self._delete_rows_locked(rows, self._chunks_of_locked([r[0] for r in rows]))

    def _locate(self, received: Received, ids: Sequence[Any]) -> list[int]:
        wanted = _queue.parse_ids(self._prefix, list(ids), False).to_pylist()
        positions = {idx: p for p, idx in enumerate(received.extra[0])}
        return [positions.get(idx, -1) if idx >= 0 else -1 for idx in wanted]

    def _receivable(self) -> bool:
        self._flush()
        with self._lock:
            now = self.clock.now()
            take, dead = self._candidates_locked(now, 1, self.max_receive_count or 0, True)
            return bool(take or dead)

    def _visible(self) -> int:
        self._flush()
        with self._lock:
            now = self.clock.now()
            row = self._db.execute(
                "SELECT COUNT(*) FROM messages WHERE visible_at <= ? AND sent_ms >= ?",
                (now, self._cutoff(now)),
            )
            return int(row.fetchone()[0])

    def _next_due(self) -> float:
        self._flush()
        with self._lock:
            now = self.clock.now()
            row = self._db.execute(
                "SELECT MIN(visible_at) FROM messages WHERE visible_at > ? AND sent_ms >= ?",
                (now, self._cutoff(now)),
            ).fetchone()
            return float("inf") if row[0] is None else float(row[0])

    def _oldest_sent_ms(self) -> int | None:
        self._flush()
        with self._lock:
            cutoff = self._cutoff(self.clock.now())
            row = self._db.execute(
                "SELECT sent_ms FROM messages WHERE sent_ms >= ? ORDER BY idx LIMIT 1", (cutoff,)
            ).fetchone()
            return None if row is None else int(row[0])

    # -- the rest of the SQS surface ---------------------------------------------

    def delete(self, message_ids: Any) -> int:
        """Delete messages by id (a str, a list of them, or a string array); returns how many."""
        if isinstance(message_ids, str):
            message_ids = [message_ids]
        elif isinstance(message_ids, (pa.Array, pa.ChunkedArray)):
            message_ids = message_ids.to_pylist()
        indices = sorted(set(_queue.parse_ids(self._prefix, list(message_ids), True).to_pylist()))
        if not indices:
            return 0
        with self._lock, self._transaction():
            self._flush_locked()
            db = self._db
            cutoff = self._cutoff(self.clock.now())
            before = db.total_changes
            rows = [(i, cutoff) for i in indices]
            db.executemany("DELETE FROM messages WHERE idx = ? AND sent_ms >= ?", rows)
            deleted = db.total_changes - before
            self._sweep |= self._chunks_of_locked(indices)
        return deleted

    def change_visibility(self, message_ids: Any, timeout: float) -> int:
        """Messages in flight become visible ``timeout`` seconds from now (0: at once); returns how many."""
        seconds = _seconds("timeout", timeout, 0, 43_200)
        if isinstance(message_ids, str):
            message_ids = [message_ids]
        elif isinstance(message_ids, (pa.Array, pa.ChunkedArray)):
            message_ids = message_ids.to_pylist()
        indices = _queue.parse_ids(self._prefix, list(message_ids), True).to_pylist()
        with self._lock, self._transaction():
            self._flush_locked()
            now = self.clock.now()
            db = self._db
            before = db.total_changes
            db.executemany(
                "UPDATE messages SET visible_at = ? WHERE idx = ? AND rc > 0 AND visible_at > ?",
                [(now + seconds, i, now) for i in indices],
            )
            changed = db.total_changes - before
        if changed and seconds == 0:
            self._notify()
        return changed

    def counts(self) -> dict[str, int]:
        """``{"visible", "in_flight", "delayed"}`` message counts now."""
        self._flush()
        with self._lock:
            now = self.clock.now()
            db = self._db
            cutoff = self._cutoff(now)
            visible = db.execute(
                "SELECT COUNT(*) FROM messages WHERE visible_at <= ? AND sent_ms >= ?", (now, cutoff)
            ).fetchone()[0]
            in_flight, delayed = db.execute(
                "SELECT COALESCE(SUM(rc > 0), 0), COALESCE(SUM(rc = 0), 0) FROM messages "
                "WHERE visible_at > ? AND sent_ms >= ?",
                (now, cutoff),
            ).fetchone()
        return {"visible": int(visible), "in_flight": int(in_flight), "delayed": int(delayed)}

    def close(self) -> None:
        """Refuse further calls and close the database (what was acknowledged is on disk)."""
        if self._closed:
            return
        self._flush()
        with self._lock:
            if self._sweep:
                with self._transaction():
                    self._sweep_locked()
        self._closed = True
        with self._lock:
            self._db.close()

    def __enter__(self) -> LocalQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        """Messages not yet deleted, redriven or expired."""
        self._flush()
        with self._lock:
            cutoff = self._cutoff(self.clock.now())
            row = self._db.execute("SELECT COUNT(*) FROM messages WHERE sent_ms >= ?", (cutoff,)).fetchone()
            return int(row[0])

    def __repr__(self) -> str:
        kind = "FIFO" if self.fifo else "standard"
        return f"LocalQueue({str(self.path)!r}, name={self.name!r}, {kind})"


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on an exception): one write lock, one commit."""

    __slots__ = ("_db",)

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
        else:
            self._db.execute("ROLLBACK")


def _ipc(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()  # type: ignore[no-any-return]


def _fits(payload: pa.RecordBatch, max_bytes: int) -> int:
    """How many leading rows of ``payload`` fit in ``max_bytes`` (at least one)."""
    if payload.nbytes <= max_bytes:  # every buffer byte, so at least the records' bytes
        return int(payload.num_rows)
    sizes = _arrow.row_nbytes(payload)
    total = 0
    for k, size in enumerate(sizes.to_pylist()):
        if k and total + size > max_bytes:
            return k
        total += size
    return int(payload.num_rows)
