"""Durable state on disk: the checkpoint directory, and file primitives shared with ``LocalLog``.

``DirectoryCheckpoints`` keeps, per consumer, one Arrow IPC file holding every
shard's ``ShardProgress`` (checkpoint, lane progress, open-window state). A
write replaces the file atomically (temp file, fsync, rename, fsync of the
directory) and keeps the generation before it, so a torn or corrupt newest
file costs at most one generation of progress (SEMANTICS 0.9): the store warns,
names the file and falls back; only when both generations are unreadable is it
an error. A per-consumer ``flock`` makes each consumer single-writer across
processes; a killed holder releases it with its file descriptors.

Writes are group-committed by one background thread: ``save`` only records the
new progress in memory and wakes the writer, which writes everything saved
meanwhile in one file per consumer, then rests: 9 times as long as the write
took (``checkpoint_interval=0``, a few milliseconds on an SSD; it keeps the
writer's CPU, mostly the kernel's fsync and rename work, under a tenth of a
core) or the interval. A checkpoint is therefore durable shortly after
``save`` returns (``flush`` waits for it; ``close`` flushes); a crash in between
only moves the durable checkpoint back, which redelivers records (at-least-once),
never skips any. The per-save cost is a dict update and a notify; the work per
write is proportional to the consumer's shard count, never to records, so the
store is pure Python (there is no per-record work for a native ``_checkpoint``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import xxhash

from streamcore.checkpoints import CheckpointStore, ShardProgress
from streamcore.errors import ConfigError, StreamcoreError

log = logging.getLogger("streamcore")

StrPath = str | os.PathLike[str]

FORMAT = b"streamcore.checkpoints/1"
NEWEST_SUFFIX = ".arrow"
PREV_SUFFIX = ".prev.arrow"
LOCK_SUFFIX = ".lock"
TMP_SUFFIX = ".arrow.tmp"
# Seconds the writer waits before trying again after a failed write.
RETRY_AFTER_ERROR = 1.0
# With checkpoint_interval=0, the writer rests this many times as long as its last write took.
WRITE_PACE = 9.0

SCHEMA = pa.schema(
    [
        ("shard", pa.int64()),
        ("checkpoint", pa.int64()),
        ("lanes", pa.list_(pa.int64())),
        ("windows", pa.binary()),
    ]
)


# -- errors ----------------------------------------------------------------------


class StorageError(StreamcoreError, OSError):
    """A file or directory of durable state cannot be created, written or synced.

    ``path`` names it; the original ``OSError`` is the ``__cause__``.
    """

    def __init__(self, message: str, path: StrPath | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)

    def __str__(self) -> str:
        return str(self.args[0])


class CorruptFileError(StreamcoreError, ValueError):
    """Durable state on disk cannot be read back: ``paths`` names the file(s) at fault."""

    def __init__(self, message: str, *paths: StrPath) -> None:
        super().__init__(message)
        self.paths = [Path(p) for p in paths]


class LockedError(StreamcoreError, RuntimeError):
    """Another live process (or store object) holds the single-writer lock.

    ``path`` is the lock file and ``pid`` the holder's process id (None if unknown).
    """

    def __init__(self, message: str, path: StrPath, pid: int | None) -> None:
        super().__init__(message)
        self.path = Path(path)
        self.pid = pid


# -- file primitives (shared with LocalLog) --------------------------------------------


def fsync_dir(path: StrPath) -> None:
    """Make the directory entries of ``path`` durable (new, renamed or removed files)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: Any) -> int:
    """Write a bytes-like object fully (``os.write`` may write less); returns its length."""
    view = memoryview(data).cast("B")
    total = len(view)
    done = 0
    while done < total:
        done += os.write(fd, view[done:])
    return total


def atomic_write(path: Path, data: Any, *, keep_previous: Path | None = None) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file, whole.

    Write ``<path>.tmp`` and fsync it; with ``keep_previous``, hard-link the
    current file there (through a temporary name, so ``path`` never goes
    missing); rename the temp file over ``path``; fsync the directory.
    """
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if keep_previous is not None:
        link = keep_previous.with_name(keep_previous.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
        try:
            os.link(path, link)
        except FileNotFoundError:
            pass  # no current file yet
        else:
            os.replace(link, keep_previous)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def make_dir(path: Path, what: str) -> None:
    """Create ``path`` (and parents) and check that files can be created in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        msg = f"cannot create the {what} {str(path)!r}: {exc.strerror or exc}"
        raise StorageError(msg, path) from exc
    if not path.is_dir():
        raise StorageError(f"the {what} {str(path)!r} is not a directory", path)
    try:  # os.access is no proof (root, read-only mounts): create a file
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        msg = f"the {what} {str(path)!r} is not writable: {exc.strerror or exc}"
        raise StorageError(msg, path) from exc


class FileLock:
    """An exclusive ``flock`` on ``path`` holding the owner's pid, released by ``release`` or death.

    ``what`` describes the locked thing in the error message.
    """

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            msg = f"cannot create the lock file {str(path)!r}: {exc.strerror or exc}"
            raise StorageError(msg, path) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            holder = f"process {pid}" if pid is not None else "another process"
            if pid == os.getpid():
                holder = f"this process ({pid}), through another object"
            msg = f"{what} is in use by {holder}: it holds the lock {str(path)!r}"
            raise LockedError(msg, path, pid) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return None


# -- checkpoint files ----------------------------------------------------------


def file_stem(consumer: str) -> str:
    """The file name stem of ``consumer``: letters, digits, ``_``, ``-`` kept, the rest %-escaped.

    Dots are escaped too, so no consumer's files can collide with another's
    ``.prev`` generation.
    """
    return urllib.parse.quote(consumer, safe="").replace(".", "%2E").replace("~", "%7E")


def checksum(progress: dict[int, ShardProgress]) -> str:
    """XXH64 over a canonical encoding of the progress, independent of Arrow's buffer layout."""
    h = xxhash.xxh64()
    for shard in sorted(progress):
        p = progress[shard]
        h.update(struct.pack(f"<qqq{len(p.lanes)}q", shard, p.checkpoint, len(p.lanes), *p.lanes))
        if p.windows is None:
            h.update(struct.pack("<q", -1))
        else:
            h.update(struct.pack("<q", len(p.windows)))
            h.update(p.windows)
    return h.hexdigest()


def encode(consumer: str, progress: dict[int, ShardProgress], generation: int) -> pa.Buffer:
    """The bytes of one consumer's checkpoint file (an Arrow IPC file, one record batch)."""
    shards = sorted(progress)
    rows = [progress[s] for s in shards]
    batch = pa.record_batch(
        [
            pa.array(shards, pa.int64()),
            pa.array([p.checkpoint for p in rows], pa.int64()),
            pa.array([p.lanes for p in rows], pa.list_(pa.int64())),
            pa.array([p.windows for p in rows], pa.binary()),
        ],
        schema=SCHEMA.with_metadata(
            {
                b"format": FORMAT,
                b"consumer": consumer.encode(),
                b"generation": str(generation).encode(),
                b"checksum": checksum(progress).encode(),
            }
        ),
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue()


@dataclass(frozen=True, slots=True)
class Generation:
    """One checkpoint file read back and verified."""

    path: Path
    consumer: str
    generation: int
    progress: dict[int, ShardProgress]


class _Unreadable(Exception):
    pass


def read_generation(path: Path) -> Generation:
    """Read and verify one checkpoint file; raises ``_Unreadable`` with the reason."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _Unreadable(exc.strerror or str(exc)) from None
    try:
        reader = pa.ipc.open_file(pa.py_buffer(data))
        table = reader.read_all()
    except (pa.ArrowException, OSError) as exc:
        raise _Unreadable(f"not a complete Arrow IPC file ({len(data)} bytes): {exc}") from None
    meta = reader.schema.metadata or {}
    if meta.get(b"format") != FORMAT:
        raise _Unreadable(f"not a streamcore checkpoint file (format {meta.get(b'format')!r})")
    if not table.schema.remove_metadata().equals(SCHEMA):
        raise _Unreadable(f"unexpected columns {table.schema.names}")
    try:
        consumer = meta[b"consumer"].decode()
        generation = int(meta[b"generation"])
        expected = meta[b"checksum"].decode()
    except (KeyError, ValueError) as exc:
        raise _Unreadable(f"incomplete metadata: {exc!r}") from None
    cols = table.to_pydict()
    progress = {
        shard: ShardProgress(checkpoint, list(lanes), windows)
        for shard, checkpoint, lanes, windows in zip(
            cols["shard"], cols["checkpoint"], cols["lanes"], cols["windows"], strict=True
        )
    }
    actual = checksum(progress)
    if actual != expected:
        raise _Unreadable(f"checksum mismatch (stored {expected}, computed {actual})")
    return Generation(path, consumer, generation, progress)


def read_consumer(directory: Path, stem: str) -> tuple[Generation | None, bool]:
    """The newest readable generation of one consumer (None: nothing saved yet).

    Returns it with whether the newest file was good (False: the caller must
    not rotate the bad file into the previous-generation slot). A bad newest
    file is a warning; both bad is ``CorruptFileError`` naming both files.
    """
    newest = directory / (stem + NEWEST_SUFFIX)
    prev = directory / (stem + PREV_SUFFIX)
    problem: str | None = None
    if newest.exists():
        try:
            return read_generation(newest), True
        except _Unreadable as exc:
            problem = f"checkpoint file {str(newest)!r} is unreadable: {exc}"
    if not prev.exists():
        if problem is None:
            return None, True
        msg = f"{problem}; and there is no previous generation {str(prev)!r} to fall back on"
        raise CorruptFileError(msg, newest, prev)
    try:
        found = read_generation(prev)
    except _Unreadable as exc:
        first = problem or f"checkpoint file {str(newest)!r} is missing"
        msg = f"{first}; and the previous generation {str(prev)!r} is unreadable too: {exc}"
        raise CorruptFileError(msg, newest, prev) from None
    if problem is None:
        problem = f"checkpoint file {str(newest)!r} is missing"
    log.warning(
        "%s; using the previous generation %r (generation %d): records after its "
        "checkpoints are delivered again",
        problem,
        str(prev),
        found.generation,
    )
    return found, False


def read_directory(path: StrPath) -> dict[str, Generation | CorruptFileError]:
    """Every consumer's checkpoints in a directory, read-only and without locks (for the CLI).

    A consumer whose files are both unreadable maps to its ``CorruptFileError``.
    """
    directory = Path(path)
    stems = set()
    for entry in directory.iterdir():
        name = entry.name
        if name.endswith(PREV_SUFFIX):
            stems.add(name[: -len(PREV_SUFFIX)])
        elif name.endswith(NEWEST_SUFFIX):
            stems.add(name[: -len(NEWEST_SUFFIX)])
    out: dict[str, Generation | CorruptFileError] = {}
    for stem in sorted(stems):
        name = urllib.parse.unquote(stem)
        try:
            found, _ = read_consumer(directory, stem)
        except CorruptFileError as exc:
            out[name] = exc
            continue
        if found is not None:
            out[found.consumer] = found
    return out


# -- the store -------------------------------------------------------------------


class _Consumer:
    """What the store holds for one consumer."""

    __slots__ = ("dirty", "generation", "lock", "newest_ok", "progress", "stem")

    def __init__(self, stem: str) -> None:
        self.stem = stem
        self.lock: FileLock | None = None
        self.progress: dict[int, ShardProgress] = {}
        self.generation = 0
        self.newest_ok = True
        self.dirty = False


class DirectoryCheckpoints(CheckpointStore):
    """Checkpoints in a directory: one Arrow IPC file per consumer, two generations kept.

    Parameters
    ----------
    path : str or os.PathLike
        The directory; created if missing. ``App(checkpoints="dir")`` makes one.
    checkpoint_interval : float
        Seconds the background writer rests between two writes. 0 (default) is
        group commit: each write carries every save made since the previous
        one, and the writer rests 9 times as long as that write took (about 10
        ms on a local SSD), so that it uses at most a tenth of a core.

    Files, per consumer (its name %-escaped, see ``file_stem``): ``<name>.arrow``
    (newest generation), ``<name>.prev.arrow`` (the one before), ``<name>.lock``
    (held with ``flock`` by the process using the consumer; it contains its pid).

    ``load`` takes the consumer's lock (``LockedError`` if another process or
    store object holds it) and reads the newest readable generation: a corrupt
    or truncated newest file is a warning on the ``"streamcore"`` logger and the
    previous generation is used; both unreadable raise ``CorruptFileError``.
    ``save`` never blocks on I/O and never raises for a failed write: the writer
    logs the failure (an error on the ``"streamcore"`` logger), keeps retrying
    every second and ``error`` holds it meanwhile; ``flush`` raises it. Until a
    write succeeds again the durable checkpoints only lag, which a restart
    pays for with redeliveries (at-least-once), never with skipped records.
    Thread-safe.
    """

    def __init__(self, path: StrPath, *, checkpoint_interval: float = 0.0) -> None:
        if (
            not isinstance(checkpoint_interval, (int, float))
            or isinstance(checkpoint_interval, bool)
            or not 0 <= checkpoint_interval <= 3600
        ):
            raise ConfigError("checkpoint_interval", checkpoint_interval, "seconds in 0..3600")
        self.path = Path(path)
        self.checkpoint_interval = float(checkpoint_interval)
        make_dir(self.path, "checkpoint directory")
        self._cond = threading.Condition(threading.Lock())
        self._consumers: dict[str, _Consumer] = {}
        self._saved = 0  # number of saves accepted
        self._written = 0  # saves covered by a completed write
        self._error: StorageError | None = None
        self._writer: threading.Thread | None = None
        self._writer_idle = False  # waiting for saves: a save must wake it
        self._wake = threading.Event()  # cuts an interval or retry wait short
        self._closing = False

    # -- CheckpointStore ---------------------------------------------------------

    def load(self, consumer: str) -> dict[int, ShardProgress]:
        with self._cond:
            self._check_open()
            state = self._acquire(consumer)
            return dict(state.progress)

    def save(self, consumer: str, progress: dict[int, ShardProgress]) -> None:
        with self._cond:
            self._check_open()
            state = self._acquire(consumer)
            state.progress.update(progress)
            state.dirty = True
            self._saved += 1
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_loop, name="streamcore-checkpoints", daemon=True
                )
                self._writer.start()
            if self._writer_idle:
                self._cond.notify_all()

    @property
    def error(self) -> StorageError | None:
        """Why the last write failed, while the writer is retrying; None when all is well."""
        return self._error

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every save made so far is durable; False if ``timeout`` (real seconds) passed.

        Raises ``StorageError`` if the writer failed meanwhile.
        """
        with self._cond:
            target = self._saved
            self._wake.set()
            while self._written < target:
                if self._error is not None:
                    raise self._error
                if self._writer is None or not self._writer.is_alive():
                    break
                if not self._cond.wait(timeout):
                    return False
            return self._written >= target

    def close(self) -> None:
        """Write what is pending, stop the writer and release the consumers' locks.

        The store may be used again afterwards (by a later App): ``load`` then
        takes the lock again and reads the files anew.
        """
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._wake.set()
            self._cond.notify_all()
            writer = self._writer
        if writer is not None:
            writer.join()
        with self._cond:
            for state in self._consumers.values():
                if state.lock is not None:
                    state.lock.release()
            self._consumers.clear()
            self._writer = None
            self._closing = False
            if self._error is not None and self._written < self._saved:
                log.error("checkpoints in %r were not all written: %s", str(self.path), self._error)
            self._error = None
            self._written = self._saved

    def __enter__(self) -> DirectoryCheckpoints:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DirectoryCheckpoints({str(self.path)!r}, consumers={sorted(self._consumers)})"

    # -- internals (under self._cond) ------------------------------------------------

    def _check_open(self) -> None:
        if self._closing:
            raise StorageError(f"the checkpoint store {str(self.path)!r} is closed", self.path)

    def _acquire(self, consumer: str) -> _Consumer:
        state = self._consumers.get(consumer)
        if state is not None:
            return state
        stem = file_stem(consumer)
        state = _Consumer(stem)
        what = f"consumer {consumer!r} of the checkpoint directory {str(self.path)!r}"
        state.lock = FileLock(self.path / (stem + LOCK_SUFFIX), what)
        try:
            for leftover in (TMP_SUFFIX, PREV_SUFFIX + ".tmp"):  # a crash mid-write
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path / (stem + leftover))
            found, state.newest_ok = read_consumer(self.path, stem)
        except BaseException:
            state.lock.release()
            raise
        if found is not None:
            state.progress = dict(found.progress)
            state.generation = found.generation
        self._consumers[consumer] = state
        return state

    # -- the writer thread ---------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._closing and not any(s.dirty for s in self._consumers.values()):
                    self._writer_idle = True
                    self._cond.wait()
                    self._writer_idle = False
                batch = []
                for name, state in self._consumers.items():
                    if state.dirty:
                        state.dirty = False
                        state.generation += 1
                        batch.append((name, state, dict(state.progress), state.generation))
                target = self._saved
                if not batch:  # closing, nothing left
                    self._written = target
                    self._cond.notify_all()
                    return
            failed: StorageError | None = None
            started = time.perf_counter()
            for name, state, progress, generation in batch:
                try:
                    self._write(name, state, progress, generation)
                except Exception as exc:  # OSError mostly; anything else must not end the writer
                    path = self.path / (state.stem + NEWEST_SUFFIX)
                    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                    failed = StorageError(
                        f"cannot write the checkpoints of consumer {name!r} to {str(path)!r}: {reason}",
                        path,
                    )
                    failed.__cause__ = exc
                    with self._cond:
                        state.dirty = True  # the next write carries it again
                    break
            with self._cond:
                if failed is None:
                    if self._error is not None:
                        log.warning("checkpoints in %r are written again", str(self.path))
                    self._written = target
                else:
                    if self._error is None or str(self._error) != str(failed):
                        log.error("%s; retrying every %g s", failed, RETRY_AFTER_ERROR)
                    for _, state, _, _ in batch:
                        state.dirty = True
                self._error = failed
                self._cond.notify_all()
                closing = self._closing
            if failed is not None:
                if closing:
                    return
                self._wake.wait(RETRY_AFTER_ERROR)
                self._wake.clear()
            elif not closing:
                # Group commit, paced: each write costs about 0.5 ms of CPU (mostly in
                # the kernel: fsync, renames), so back-to-back writes would take a third
                # of a core from the consumer. Resting WRITE_PACE times as long as the
                # write took bounds that to 1 / (1 + WRITE_PACE); flush() cuts it short.
                pause = self.checkpoint_interval or (time.perf_counter() - started) * WRITE_PACE
                self._wake.wait(pause)
                self._wake.clear()

    def _write(self, name: str, state: _Consumer, progress: dict[int, ShardProgress], gen: int) -> None:
        newest = self.path / (state.stem + NEWEST_SUFFIX)
        prev = self.path / (state.stem + PREV_SUFFIX)
        # A newest file found bad at load must not become the fallback generation.
        atomic_write(newest, encode(name, progress, gen), keep_previous=prev if state.newest_ok else None)
        state.newest_ok = True


def open_store(value: object, *, checkpoint_interval: float = 0.0) -> CheckpointStore:
    """What ``App(checkpoints=...)`` accepts besides None and a ``CheckpointStore``: a directory."""
    if isinstance(value, (str, os.PathLike)):
        return DirectoryCheckpoints(value, checkpoint_interval=checkpoint_interval)
    raise ConfigError(
        "checkpoints", value, "None, a directory path (str or os.PathLike) or a CheckpointStore"
    )


__all__ = [
    "CorruptFileError",
    "DirectoryCheckpoints",
    "LockedError",
    "StorageError",
    "file_stem",
    "read_directory",
]
