"""``LocalLog``: ``MemoryStream`` made durable, as Arrow IPC segment files in a directory.

Layout of a log directory::

    streamcore-log.json            name, shard count and hash ranges (written once, atomically)
    streamcore-log.lock            flock held by the process that has the log open (holds its pid)
    shard-000000/
        00000000000000000000.arrows    a segment: an Arrow IPC *stream*, named by its first seq
        00000000000000052311.arrows
    shard-000001/
        ...

Each ``put`` writes, per touched shard, its records (the columns a consumer
sees: ``seq``, ``key``, ``arrival`` and the payload) as one IPC record batch at
the end of the shard's active segment, then syncs as configured, and only then
makes them visible to consumers and returns: what ``put`` acknowledged is on
disk, and what it did not is never read back. The record sizes the dispatcher
needs are recomputed natively on open rather than stored.
Segments roll when they reach ``segment_bytes`` (or when a put's schema
differs: one schema per IPC stream); retention deletes whole segments once all
their records expired. A sealed segment's records are read back memory-mapped,
so a log larger than memory costs page cache, not heap.

Recovery on open: each shard's segments are read memory-mapped in seq order;
bytes after the last complete record batch (a crash mid-write) are truncated
with a warning on the ``"streamcore"`` logger. A gap in the seqs, a segment
that is not an Arrow stream or a batch whose seqs do not follow is
``CorruptFileError`` naming the file. Files whose names do not match the
layout are skipped with a warning.

Atomicity is per shard: a crash during a put that touches several shards can
leave its records durable on some shards and not others (like a Kinesis
``PutRecords`` that fails part-way); such a put was never acknowledged. An
``OSError`` during a put rolls every shard back, so nothing of that put is
visible, now or after a reopen.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import json
import logging
import os
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from streamcore import _arrow, _partition
from streamcore.clock import Clock
from streamcore.durable import (
    CorruptFileError,
    FileLock,
    StorageError,
    StrPath,
    atomic_write,
    fsync_dir,
    make_dir,
    write_all,
)
from streamcore.errors import ConfigError
from streamcore.sources.memory import MemoryStream, ShardSpec
from streamcore.sources.shardlog import Chunk, ShardLog

log = logging.getLogger("streamcore")

META_NAME = "streamcore-log.json"
LOCK_NAME = "streamcore-log.lock"
FORMAT = "streamcore.locallog"
VERSION = 1
SHARD_DIR = "shard-{:06d}"
SEGMENT = "{:020d}.arrows"
SHARD_DIR_RE = re.compile(r"^shard-(\d{6})$")
SEGMENT_RE = re.compile(r"^(\d{20})\.arrows$")
FSYNC_MODES = ("always", "interval", "never")
FSYNC_INTERVAL = 1.0  # real seconds between two syncs with fsync="interval"
DEFAULT_SEGMENT_BYTES = 64 * 2**20
CONTINUATION = b"\xff\xff\xff\xff"  # first bytes of every encapsulated IPC message
IOV_MAX = 512  # iovecs per writev call (the OS limit is 1024)
SYSTEM_FIELDS = ("seq", "key", "arrival")


# -- reading segments ------------------------------------------------------------


@dataclass(slots=True)
class SegmentScan:
    """What reading one segment file found."""

    size: int  # bytes in the file
    batches: list[pa.RecordBatch] = field(default_factory=list)  # memory-mapped
    ends: list[int] = field(default_factory=list)  # file offset after each batch
    header_end: int = 0  # offset after the schema message (0: none complete)
    schema: pa.Schema | None = None
    error: str | None = None  # why reading stopped before the end of the file
    foreign: bool = False  # does not start like an Arrow IPC stream

    @property
    def good_end(self) -> int:
        """Offset after the last complete message; what a torn tail is cut back to."""
        return self.ends[-1] if self.ends else self.header_end


def read_segment(path: Path) -> SegmentScan:
    """Read a segment memory-mapped; stops at the first incomplete or unreadable message."""
    size = path.stat().st_size
    scan = SegmentScan(size)
    if size == 0:
        return scan
    with open(path, "rb") as f:
        head = f.read(4)
    if len(head) == 4 and head != CONTINUATION:
        scan.foreign = True
        return scan
    source = pa.memory_map(str(path))
    try:
        reader = pa.ipc.open_stream(source)
        scan.schema = reader.schema
        scan.header_end = source.tell()
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            scan.batches.append(batch)
            scan.ends.append(source.tell())
    except (pa.ArrowException, OSError) as exc:
        scan.error = str(exc)
    finally:
        # The batches keep the mapping alive; the descriptor is not needed any more.
        source.close()
    if scan.error is None and scan.good_end < size:
        scan.error = "data after the end-of-stream marker"
    return scan


def _check_schema(path: Path, schema: pa.Schema | None) -> None:
    if schema is None:
        return
    if (
        schema.names[:3] != list(SYSTEM_FIELDS)
        or schema.field("seq").type != pa.uint64()
        or not pa.types.is_timestamp(schema.field("arrival").type)
    ):
        msg = (
            f"{str(path)!r} is not a streamcore segment: expected the columns "
            f"seq (uint64), key, arrival (timestamp) first, got {schema}"
        )
        raise CorruptFileError(msg, path)


def _seq_bounds(batch: pa.RecordBatch) -> tuple[int, int]:
    seqs = batch.column(0)
    return seqs[0].as_py(), seqs[-1].as_py()


def _arrival_ms(batch: pa.RecordBatch) -> int:
    return int(batch.column(2)[0].value)


# -- writing -----------------------------------------------------------------------


class _Parts:
    """A sink for pyarrow's IPC writer that collects the buffers of one message, zero-copy."""

    closed = False

    def __init__(self) -> None:
        self.parts: list[Any] = []
        self.position = 0

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        if n:
            self.parts.append(data)
            self.position += n
        return n

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _writev_all(fd: int, parts: Sequence[Any]) -> int:
    """Write every buffer, in order, with as few ``writev`` calls as the kernel allows."""
    views = [memoryview(p).cast("B") for p in parts]
    total = sum(len(v) for v in views)
    i = 0
    while i < len(views):
        n = os.writev(fd, views[i : i + IOV_MAX])
        if n <= 0:
            raise OSError(f"writev wrote {n} bytes")
        while n:
            if n >= len(views[i]):
                n -= len(views[i])
                i += 1
            else:
                views[i] = views[i][n:]
                n = 0
    return total


@dataclass(slots=True)
class Segment:
    """One segment file: seqs ``first_seq .. end_seq - 1``."""

    first_seq: int
    path: Path
    end_seq: int
    nbytes: int
    mapped: bool = True  # its chunks' records are read from the file, not held in memory


class _Writer:
    """The open end of a shard's active segment."""

    __slots__ = ("dirty", "fd", "ipc", "mark", "schema", "segment", "sink")

    def __init__(self, segment: Segment, schema: pa.Schema, *, reuse: bool) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if reuse else os.O_EXCL)
        self.fd = os.open(segment.path, flags, 0o644)
        self.segment = segment
        self.schema = schema
        self.sink = _Parts()
        try:
            self.ipc = pa.ipc.new_stream(self.sink, schema)
        except BaseException:
            os.close(self.fd)
            raise
        self.mark = 0  # file size before the write in progress
        self.dirty = False

    @property
    def size(self) -> int:
        return self.segment.nbytes

    def write(self, records: pa.RecordBatch) -> None:
        self.mark = self.segment.nbytes
        self.sink.parts.clear()
        self.ipc.write_batch(records)  # the first batch also carries the schema message
        self.segment.nbytes += _writev_all(self.fd, self.sink.parts)
        self.sink.parts.clear()
        self.dirty = True

    def sync(self) -> None:
        if self.dirty:
            os.fsync(self.fd)
            self.dirty = False

    def rollback(self) -> None:
        os.ftruncate(self.fd, self.mark)
        self.segment.nbytes = self.mark

    def close(self) -> None:
        os.close(self.fd)


class SegmentLog(ShardLog):
    """A ``ShardLog`` whose chunks are also record batches in segment files.

    The owning ``LocalLog`` serialises ``write``/``sync``/``rollback``/``publish``.
    """

    def __init__(
        self,
        shard_id: int,
        start: int,
        end: int,
        folder: Path,
        segment_bytes: int,
        fsync: str,
        parents: tuple[int, ...] = (),
    ) -> None:
        super().__init__(shard_id, start, end, parents)
        self.folder = folder
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.segments: list[Segment] = []
        self._writer: _Writer | None = None
        self._new_entry = False  # a file was created or removed: the directory needs a sync
        self.last_schema: pa.Schema | None = None  # of the newest segment
        self.broken: str | None = None  # why the files are in an unknown state
        make_dir(folder, "shard directory")
        self._load()

    # -- opening -------------------------------------------------------------------

    def _load(self) -> None:
        found: list[tuple[int, Path]] = []
        for entry in sorted(self.folder.iterdir()):
            match = SEGMENT_RE.match(entry.name)
            if match and entry.is_file():
                found.append((int(match.group(1)), entry))
            elif not entry.name.startswith(".probe-"):
                log.warning("%r is not a segment of the log; skipped", str(entry))
        found.sort()
        for i, (first, path) in enumerate(found):
            following = found[i + 1][0] if i + 1 < len(found) else None
            self._load_segment(first, path, following, opening=i == 0)

    def _load_segment(self, first: int, path: Path, following: int | None, *, opening: bool) -> None:
        scan = read_segment(path)
        if scan.foreign:
            raise CorruptFileError(f"{str(path)!r} is not an Arrow IPC stream", path)
        _check_schema(path, scan.schema)
        if scan.schema is not None:
            self.last_schema = scan.schema
        if opening:
            self.next_seq = self.trim_seq = first
        elif first != self.next_seq:
            msg = (
                f"{str(path)!r} starts at seq {first} but the segment before it ends at seq "
                f"{self.next_seq - 1}: seqs {self.next_seq}..{first - 1} of shard "
                f"{self.shard_id} are missing"
            )
            raise CorruptFileError(msg, path)
        end = first
        for batch, offset in zip(scan.batches, [scan.header_end, *scan.ends], strict=False):
            if not batch.num_rows:
                continue
            low, high = _seq_bounds(batch)
            if low != end or high != end + batch.num_rows - 1:
                msg = (
                    f"{str(path)!r}: the record batch at byte {offset} holds seqs {low}..{high}, "
                    f"expected {end}..{end + batch.num_rows - 1}"
                )
                raise CorruptFileError(msg, path)
            end += batch.num_rows
        if scan.error is not None:
            if following is not None and following != end:
                msg = (
                    f"{str(path)!r} is unreadable after byte {scan.good_end} ({scan.error}) "
                    f"and the next segment starts at seq {following}, not {end}"
                )
                raise CorruptFileError(msg, path)
            log.warning(
                "%r: torn tail: truncating %d bytes after the last complete record batch "
                "(byte %d; %s); they are the unacknowledged end of an interrupted write",
                str(path),
                scan.size - scan.good_end,
                scan.good_end,
                scan.error,
            )
            self._truncate(path, scan.good_end)
        if end == first and following is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # an empty segment followed by others holds nothing
            return
        for batch in scan.batches:
            if batch.num_rows:
                self.append(batch, _arrow.row_nbytes(batch), _arrival_ms(batch))
        self.segments.append(Segment(first, path, end, scan.good_end))

    def _truncate(self, path: Path, size: int) -> None:
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.ftruncate(fd, size)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            msg = f"cannot truncate the torn tail of {str(path)!r}: {exc.strerror or exc}"
            raise StorageError(msg, path) from exc

    # -- writing (serialised by the LocalLog; without its read lock) ---------------------

    def write(self, records: pa.RecordBatch) -> None:
        """Append one put's records to the active segment (rolling first if due)."""
        if self.broken is not None:
            raise StorageError(self.broken, self.folder)
        writer = self._writer
        try:
            if (
                writer is None
                or writer.size >= self.segment_bytes
                or not writer.schema.equals(records.schema, check_metadata=True)
            ):
                writer = self._roll(records.schema)
            writer.write(records)
            self.last_schema = records.schema
        except OSError as exc:
            path = writer.segment.path if writer is not None else self.folder
            msg = f"cannot write to {str(path)!r}: {exc.strerror or exc}"
            raise StorageError(msg, path) from exc

    def sync(self) -> None:
        """Make what was written durable (the new segment's name included)."""
        writer = self._writer
        try:
            if writer is not None:
                writer.sync()
            if self._new_entry:
                fsync_dir(self.folder)
                self._new_entry = False
        except OSError as exc:
            path = writer.segment.path if writer is not None else self.folder
            msg = f"cannot sync {str(path)!r}: {exc.strerror or exc}"
            raise StorageError(msg, path) from exc

    def rollback(self) -> None:
        """Undo the write of the put in progress; never raises (marks the log broken instead)."""
        writer = self._writer
        if writer is None:
            return
        self._writer = None  # the IPC writer may have emitted state (schema) that was cut off
        try:
            writer.rollback()
            if self.fsync != "never":
                os.fsync(writer.fd)
        except OSError as exc:
            self.broken = (
                f"shard {self.shard_id}: a failed write could not be undone "
                f"({exc.strerror or exc}); close and reopen the log to recover"
            )
            log.error("%s", self.broken)
        finally:
            with contextlib.suppress(OSError):
                writer.close()
            self._sealed(writer.segment)

    def publish(self, records: pa.RecordBatch, sizes: pa.Array, arrival_ms: int) -> None:
        """Make durable records visible (under the stream's lock)."""
        self.append(records, sizes, arrival_ms)
        assert self._writer is not None
        self._writer.segment.end_seq = self.next_seq
        for segment in self.segments:
            if not segment.mapped and segment is not self._writer.segment:
                self._map(segment)

    def _roll(self, schema: pa.Schema) -> _Writer:
        if self._writer is not None:
            self._seal()
        last = self.segments[-1] if self.segments else None
        reuse = last is not None and last.first_seq == self.next_seq  # empty: no records yet
        if reuse:
            assert last is not None
            segment = last
            segment.nbytes = 0
        else:
            segment = Segment(self.next_seq, self.folder / SEGMENT.format(self.next_seq), self.next_seq, 0)
        self._writer = _Writer(segment, schema, reuse=reuse)
        if not reuse:
            self.segments.append(segment)
        segment.mapped = False
        self._new_entry = True
        return self._writer

    def _seal(self) -> None:
        writer = self._writer
        assert writer is not None
        self._writer = None
        try:
            if self.fsync != "never":
                writer.sync()
        finally:
            writer.close()
            self._sealed(writer.segment)

    def _sealed(self, segment: Segment) -> None:
        if segment.end_seq == segment.first_seq:
            segment.mapped = True  # nothing to map

    def _map(self, segment: Segment) -> None:
        """Swap the in-memory copies of a sealed segment's records for memory-mapped ones."""
        segment.mapped = True
        try:
            scan = read_segment(segment.path)
        except OSError as exc:
            log.warning("cannot map %r (%s); its records stay in memory", str(segment.path), exc)
            return
        for batch in scan.batches:
            first = _seq_bounds(batch)[0]
            i = bisect.bisect_right(self._starts, first) - 1
            if i < 0 or self._starts[i] != first:
                continue  # expired meanwhile
            old = self._chunks[i]
            if old.records.num_rows != batch.num_rows:
                log.warning("%r does not match the records written; not mapped", str(segment.path))
                return
            self._chunks[i] = Chunk(first, batch, old.sizes, old.arrival_ms, old.end_seq)

    @property
    def needs_sync(self) -> bool:
        return (self._writer is not None and self._writer.dirty) or self._new_entry

    def close_files(self) -> None:
        if self._writer is not None:
            self._seal()

    # -- retention -------------------------------------------------------------------

    def expire(self, before_ms: int) -> int:
        dropped = super().expire(before_ms)
        if dropped:
            self._delete_expired()
        return dropped

    def _delete_expired(self) -> None:
        while self.segments and self.segments[0].end_seq <= self.trim_seq:
            segment = self.segments[0]
            if len(self.segments) == 1:
                if segment.first_seq == segment.end_seq:
                    return  # the empty segment that records next_seq
                # Keep an empty segment named next_seq, so a reopened log goes on from there;
                # it must be durable before the last segment holding records goes.
                marker = Segment(self.next_seq, self.folder / SEGMENT.format(self.next_seq), self.next_seq, 0)
                created = False
                try:
                    if self._writer is not None:
                        self._seal()
                    fd = os.open(marker.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                    created = True
                    try:  # a stream of no batches: it keeps the schema too
                        if self.last_schema is not None:
                            marker.nbytes = write_all(fd, self.last_schema.serialize())
                        if self.fsync != "never":
                            os.fsync(fd)
                    finally:
                        os.close(fd)
                    if self.fsync != "never":
                        fsync_dir(self.folder)
                except OSError as exc:
                    log.warning("cannot create %r (%s); expired segments kept", str(marker.path), exc)
                    if created:
                        with contextlib.suppress(OSError):
                            marker.path.unlink()
                    return
                self.segments.append(marker)
            try:
                segment.path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot delete the expired segment %r: %s", str(segment.path), exc)
                return
            self.segments.pop(0)
            self._new_entry = True


# -- the stream --------------------------------------------------------------------


def _layout(meta: dict[str, Any], meta_path: Path) -> list[ShardSpec]:
    """The shards a log's description holds, checked: open shards must tile the hash space."""
    try:
        specs = [
            ShardSpec(
                int(s["id"]),
                int(s["hash_start"]),
                int(s["hash_end"]),
                tuple(int(p) for p in s.get("parents", ())),
            )
            for s in meta["shards"]
        ]
        ids = {s.shard_id for s in specs}
        opened = [int(i) for i in meta.get("open", sorted(ids))]
        specs = [
            ShardSpec(s.shard_id, s.start, s.end, s.parents, s.shard_id not in opened) for s in specs
        ]
        ranges = sorted((s.start, s.end) for s in specs if not s.closed)
        tiled = bool(ranges) and ranges[0][0] == 0 and ranges[-1][1] == 1 << 64
        tiled = tiled and all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
        if len(ids) != len(specs) or not set(opened) <= ids or not tiled:
            raise ValueError("the open shards' hash ranges do not cover the hash space once")
        if any(p not in ids or p >= s.shard_id for s in specs for p in s.parents):
            raise ValueError("a shard's parent is unknown")
    except (ValueError, KeyError, TypeError) as exc:
        msg = f"{str(meta_path)!r} does not describe a streamcore log: {exc}"
        raise CorruptFileError(msg, meta_path) from None
    return specs


class LocalLog(MemoryStream):
    """A durable ``MemoryStream``: the same API and semantics, stored in a directory.

    Parameters
    ----------
    path : str or os.PathLike
        The log's directory: created (with its parents) if missing; reopened if it
        holds a log. An existing non-empty directory that is not a log is an error.
    shards : int, optional
        Number of shards of a new log (default 1). For an existing log, None
        reopens it as it is; another count than the stored one is a ``ConfigError``
        (resharding is not supported yet).
    name : str, optional
        Name in ``Batch.source``; default: the directory's name. Stored with the log.
    retention : float
        Seconds a record is kept; whole segments are deleted once all their
        records expired (checked on each put, as ``MemoryStream``).
    clock : Clock, optional
        Stamps ``arrival``. Without one, the clock of the App it is attached to.
    fsync : {"always", "interval", "never"}
        ``"always"``: ``put`` returns after its records are fsynced. ``"interval"``:
        a background thread fsyncs at most every second (real time); a crash of
        the machine loses up to about a second of acknowledged puts, a crash of
        the process none. ``"never"``: leave it to the operating system.
    segment_bytes : int
        A segment rolls once it holds at least this many bytes (default 64 MiB).

    Only one ``LocalLog`` object at a time may have a directory open (an
    ``flock``; ``LockedError`` names the holder's pid). ``close`` syncs, closes
    the files and releases the lock; records stay readable.
    """

    def __init__(
        self,
        path: StrPath,
        shards: int | None = None,
        *,
        name: str | None = None,
        retention: float = 86400.0,
        clock: Clock | None = None,
        fsync: str = "always",
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        if fsync not in FSYNC_MODES:
            raise ConfigError("fsync", fsync, "'always', 'interval' or 'never'")
        if not isinstance(segment_bytes, int) or isinstance(segment_bytes, bool) or segment_bytes < 1:
            raise ConfigError("segment_bytes", segment_bytes, "an integer >= 1")
        if shards is not None and (not isinstance(shards, int) or isinstance(shards, bool) or shards < 1):
            raise ConfigError("shards", shards, "None or an integer >= 1")
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigError("name", name, "None or a non-empty string")
        self.path = Path(path)
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        make_dir(self.path, "log directory")
        meta_path = self.path / META_NAME
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path / (META_NAME + ".tmp"))  # a crash while creating the log
        if not meta_path.exists():
            strangers = [e.name for e in self.path.iterdir() if e.name != LOCK_NAME]
            if strangers:
                msg = (
                    f"{str(self.path)!r} is not empty and holds no streamcore log "
                    f"(no {META_NAME}); found {sorted(strangers)[:5]}"
                )
                raise CorruptFileError(msg, self.path)
        self._files_lock = FileLock(self.path / LOCK_NAME, f"the log {str(self.path)!r}")
        try:
            self._meta = self._open_meta(meta_path, shards, name)
            self._saved_layout = _layout(self._meta, meta_path)  # what _initial_shards gives
            super().__init__(
                len(self._saved_layout), name=self._meta["name"], retention=retention, clock=clock
            )
            self._restore_schema()
            known = {META_NAME, LOCK_NAME, *(SHARD_DIR.format(s) for s in self._logs)}
            for entry in sorted(self.path.iterdir()):
                if entry.name not in known and not entry.name.startswith(".probe-"):
                    log.warning("%r is not part of the log; skipped", str(entry))
        except BaseException:
            self._files_lock.release()
            raise
        self._put_lock = threading.Lock()  # serialises puts, syncs and close
        self._sync_error: StorageError | None = None
        self._syncer: threading.Thread | None = None
        self._sync_pool: ThreadPoolExecutor | None = None
        self._stop_syncing = threading.Event()
        self._files_open = True

    def _open_meta(self, meta_path: Path, shards: int | None, name: str | None) -> dict[str, Any]:
        if meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text())
                if meta.get("format") != FORMAT or meta.get("version") != VERSION:
                    raise ValueError(f"format {meta.get('format')!r} version {meta.get('version')!r}")
                count = len(meta["shards"])
                stored_name = meta["name"]
                if not isinstance(stored_name, str) or not count:
                    raise ValueError("no name or no shards")
                for s in meta["shards"]:
                    int(s["hash_start"]), int(s["hash_end"])
            except (ValueError, KeyError, TypeError) as exc:
                msg = f"{str(meta_path)!r} does not describe a streamcore log: {exc}"
                raise CorruptFileError(msg, meta_path) from None
            count = len(meta.get("open", meta["shards"]))
            if shards is not None and shards != count:
                allowed = f"{count} (the log {str(self.path)!r} has {count} open shards) or None"
                raise ConfigError("shards", shards, allowed)
            if name is not None and name != stored_name:
                allowed = f"{stored_name!r} (the name the log was created with) or None"
                raise ConfigError("name", name, allowed)
            return dict(meta)
        count = shards or 1
        starts = _partition.even_ranges(count)
        ends = [*starts[1:], 1 << 64]
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "name": name or self.path.resolve().name or "log",
            "shards": [
                {"id": i, "hash_start": s, "hash_end": e}
                for i, (s, e) in enumerate(zip(starts, ends, strict=True))
            ],
            "open": list(range(count)),
        }
        try:
            atomic_write(meta_path, (json.dumps(meta, indent=1) + "\n").encode())
        except OSError as exc:
            msg = f"cannot write {str(meta_path)!r}: {exc.strerror or exc}"
            raise StorageError(msg, meta_path) from exc
        return meta

    def _restore_schema(self) -> None:
        """Fix the stream's schema from the segments, as the first put fixed it before."""
        for shard_log in self._segment_logs():
            schema = shard_log.last_schema
            if schema is not None:
                self._key_type = schema.field("key").type
                payload = [f.remove_metadata() for f in list(schema)[len(SYSTEM_FIELDS) :]]
                self._payload_schema = pa.schema(payload)
                return

    def _initial_shards(self, shards: int) -> list[ShardSpec]:
        return self._saved_layout

    def _new_log(self, shard_id: int, start: int, end: int, parents: tuple[int, ...] = ()) -> ShardLog:
        folder = self.path / SHARD_DIR.format(shard_id)
        return SegmentLog(shard_id, start, end, folder, self.segment_bytes, self.fsync, parents)

    def _reshard_guard(self) -> contextlib.AbstractContextManager[Any]:
        return self._put_lock  # no put is between its disk write and its publication

    def _reshard_locked(self, parents: list[ShardLog], children: list[ShardSpec]) -> None:
        """The new layout is on disk (atomically) before it takes effect, or nothing changes."""
        held = [ShardSpec(g.shard_id, g.range_start, g.range_end, g.parents) for g in self._logs.values()]
        shards = [
            {"id": s.shard_id, "hash_start": s.start, "hash_end": s.end, "parents": list(s.parents)}
            for s in [*held, *children]
        ]
        meta = {**self._meta, "shards": shards, "open": self._open_after(parents, children)}
        meta_path = self.path / META_NAME
        try:
            atomic_write(meta_path, (json.dumps(meta, indent=1) + "\n").encode())
        except OSError as exc:
            msg = f"cannot write {str(meta_path)!r}: {exc.strerror or exc}"
            raise StorageError(msg, meta_path) from exc
        self._meta = meta
        super()._reshard_locked(parents, children)

    def _segment_logs(self) -> list[SegmentLog]:
        return [shard_log for shard_log in self._logs.values() if isinstance(shard_log, SegmentLog)]

    # -- writing -------------------------------------------------------------------

    def put(self, data: Any, key: str = "key", *, keys: Sequence[Any] | None = None) -> pa.Table:
        """Append records durably; returns each input row's ``shard`` (int64) and ``seq`` (uint64).

        As ``MemoryStream.put``; it returns once the records are written (and
        fsynced with ``fsync="always"``). An ``OSError`` while writing raises
        ``StorageError`` and leaves nothing of the call stored.
        """
        with self._put_lock:
            if self._sync_error is not None:
                error, self._sync_error = self._sync_error, None
                raise error
            return super().put(data, key, keys=keys)

    def _store_locked(
        self, pending: list[tuple[ShardLog, pa.RecordBatch, pa.Array]], arrival_ms: int
    ) -> None:
        # The disk I/O runs without the read lock, so consumers go on reading
        # meanwhile; self._put_lock keeps other puts (and seq assignment) out.
        self._lock.release()
        try:
            self._write(pending)
        finally:
            self._lock.acquire()
        for shard_log, records, sizes in pending:
            assert isinstance(shard_log, SegmentLog)
            shard_log.publish(records, sizes, arrival_ms)

    def _write(self, pending: list[tuple[ShardLog, pa.RecordBatch, pa.Array]]) -> None:
        started: list[SegmentLog] = []
        try:
            for shard_log, records, _ in pending:
                assert isinstance(shard_log, SegmentLog)
                started.append(shard_log)
                shard_log.write(records)
            if self.fsync == "always":
                self._sync_all(started)
        except BaseException:
            for shard_log in started:
                shard_log.rollback()
            raise
        if self.fsync == "interval" and self._syncer is None:
            self._syncer = threading.Thread(target=self._sync_loop, name="streamcore-fsync", daemon=True)
            self._syncer.start()

    def _sync_all(self, logs: list[SegmentLog]) -> None:
        """Sync several shards' files at once.

        File systems commit concurrent fsyncs together (one journal commit), so
        a put touching eight shards costs about one fsync, not eight.
        """
        if not logs:
            return
        if len(logs) == 1:
            logs[0].sync()
            return
        if self._sync_pool is None:
            workers = min(len(self._logs), 16)
            self._sync_pool = ThreadPoolExecutor(workers, thread_name_prefix="streamcore-fsync")
        errors = [f.exception() for f in [self._sync_pool.submit(x.sync) for x in logs]]
        for error in errors:
            if error is not None:
                raise error

    def _sync_loop(self) -> None:
        while not self._stop_syncing.wait(FSYNC_INTERVAL):
            with self._put_lock:
                if not self._files_open:
                    return
                try:
                    self._sync_all([x for x in self._segment_logs() if x.needs_sync])
                except StorageError as exc:
                    log.error("%s", exc)
                    self._sync_error = exc

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        """Refuse further puts, sync and close the files, release the directory's lock.

        Records already stored stay readable.
        """
        self._stop_syncing.set()
        with self._put_lock:
            super().close()
            if not self._files_open:
                return
            self._files_open = False
            try:
                for shard_log in self._segment_logs():
                    shard_log.close_files()
                if self.fsync != "never":
                    for shard_log in self._segment_logs():
                        fsync_dir(shard_log.folder)
            finally:
                if self._sync_pool is not None:
                    self._sync_pool.shutdown()
                self._files_lock.release()

    def __enter__(self) -> LocalLog:
        return self

    def __repr__(self) -> str:
        return (
            f"LocalLog({str(self.path)!r}, name={self.name!r}, shards={len(self._open)}, records={len(self)})"
        )


# -- inspection (read-only, no lock: for the command line) --------------------------


@dataclass(frozen=True, slots=True)
class ShardInfo:
    """What ``inspect_log`` reports for one shard."""

    shard: int
    segments: int
    first_seq: int  # first seq still stored
    next_seq: int  # seq the next record will get
    nbytes: int
    torn: bool  # the last segment has an incomplete tail (a write in progress, or a crash)


def inspect_log(path: StrPath) -> tuple[dict[str, Any], list[ShardInfo]]:
    """The description of a log and a summary of each shard, without opening it for writing."""
    root = Path(path)
    meta_path = root / META_NAME
    try:
        meta = json.loads(meta_path.read_text())
        shard_ids = [int(s["id"]) for s in meta["shards"]]
    except FileNotFoundError:
        msg = f"{str(root)!r} is not a streamcore log (no {META_NAME})"
        raise CorruptFileError(msg, meta_path) from None
    except (ValueError, KeyError, TypeError) as exc:
        msg = f"{str(meta_path)!r} does not describe a streamcore log: {exc}"
        raise CorruptFileError(msg, meta_path) from None
    infos = []
    for shard in shard_ids:
        folder = root / SHARD_DIR.format(shard)
        files = sorted(
            (int(m.group(1)), e)
            for e in (folder.iterdir() if folder.is_dir() else [])
            if (m := SEGMENT_RE.match(e.name))
        )
        first = files[0][0] if files else 0
        next_seq = first
        torn = False
        nbytes = sum(e.stat().st_size for _, e in files)
        if files:
            start, last = files[-1]
            scan = read_segment(last)
            next_seq = start + sum(b.num_rows for b in scan.batches)
            torn = scan.error is not None or scan.foreign
        infos.append(ShardInfo(shard, len(files), first, next_seq, nbytes, torn))
    return meta, infos
