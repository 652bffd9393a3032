"""Checkpoint stores: where each consumer's per-shard progress is kept.

A shard's checkpoint is the highest seq S such that every record with
seq <= S is done (SEMANTICS 0.3). With several lanes, lanes run ahead of the
checkpoint; the store also keeps each lane's last done seq so that a restart
with the same lane count skips what was already done (and open window state,
for tumbling windows). ``MemoryCheckpoints`` keeps everything in this process
and can be shared by several App instances, so a new App resumes where an old
one stopped.
"""

from __future__ import annotations

import threading
from typing import Any

from streamcore.windows import decode_state, encode_state


class ShardProgress:
    """What a consumer has done on one shard.

    Attributes
    ----------
    checkpoint : int
        Highest seq with every record up to it done; -1 when none is.
    lanes : list[int]
        Each lane's last done seq (-1: none); its length is the lane count.
    windows : bytes or None
        Serialised open tumbling-window state, if any. Built lazily from
        ``states`` when a store asks for it, so an in-memory store never pays
        for serialising window state.
    states : dict or None
        ``{lane: (window index, state dict)}`` of the open windows (decoded ``windows``;
        a decoded pair is a list).
    """

    __slots__ = ("_states", "_windows", "checkpoint", "lanes")

    def __init__(
        self,
        checkpoint: int,
        lanes: list[int] | None = None,
        windows: bytes | None = None,
        *,
        states: dict[int, Any] | None = None,
    ) -> None:
        self.checkpoint = checkpoint
        self.lanes = list(lanes) if lanes is not None else []
        self._windows = windows
        self._states = states

    @property
    def windows(self) -> bytes | None:
        if self._windows is None and self._states:
            self._windows = encode_state({str(lane): v for lane, v in self._states.items()})
        return self._windows

    @property
    def states(self) -> dict[int, Any]:
        if self._states is None:
            decoded = decode_state(self._windows) if self._windows else {}
            self._states = {int(lane): v for lane, v in decoded.items()}
        return self._states

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ShardProgress):
            return NotImplemented
        return (self.checkpoint, self.lanes, self.windows) == (other.checkpoint, other.lanes, other.windows)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ShardProgress(checkpoint={self.checkpoint}, lanes={self.lanes}, windows={self.windows!r})"


_new = object.__new__


def make_progress(checkpoint: int, lanes: list[int], states: dict[int, Any] | None) -> ShardProgress:
    """``ShardProgress(checkpoint, lanes, states=states)`` for a consumer, which saves one per batch.

    ``lanes`` must be a list of the caller's own (it is kept, not copied). A
    class call with a keyword argument packs it into a dict and goes through
    ``type.__call__``; this costs a third as much.
    """
    progress: ShardProgress = _new(ShardProgress)
    progress.checkpoint = checkpoint
    progress.lanes = lanes
    progress._windows = None
    progress._states = states
    return progress


class CheckpointStore:
    """Interface of a checkpoint store. Implementations are thread-safe."""

    def load(self, consumer: str) -> dict[int, ShardProgress]:
        """The last saved progress of every shard of ``consumer`` (absent: none saved)."""
        raise NotImplementedError

    def save(self, consumer: str, progress: dict[int, ShardProgress]) -> None:
        """Record new progress for some shards of ``consumer``."""
        raise NotImplementedError

    def save_shard(self, consumer: str, shard: int, progress: ShardProgress) -> None:
        """``save(consumer, {shard: progress})``: a consumer saves one per batch.

        A store may override it to spare the dict.
        """
        self.save(consumer, {shard: progress})

    def close(self) -> None:
        """Release the store's resources (locks, files)."""


class MemoryCheckpoints(CheckpointStore):
    """Checkpoints in memory, shareable between App instances of one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, dict[int, ShardProgress]] = {}
        self._save_overridden = type(self).save is not MemoryCheckpoints.save

    def load(self, consumer: str) -> dict[int, ShardProgress]:
        with self._lock:
            return dict(self._data.get(consumer, {}))

    def save(self, consumer: str, progress: dict[int, ShardProgress]) -> None:
        with self._lock:
            saved = self._data.get(consumer)
            if saved is None:  # not setdefault: that makes a dict on every save
                saved = self._data[consumer] = {}
            saved.update(progress)

    def save_shard(self, consumer: str, shard: int, progress: ShardProgress) -> None:
        if self._save_overridden:  # a subclass's save sees every save
            self.save(consumer, {shard: progress})
            return
        with self._lock:
            saved = self._data.get(consumer)
            if saved is None:
                saved = self._data[consumer] = {}
            saved[shard] = progress

    def __repr__(self) -> str:
        return f"MemoryCheckpoints(consumers={sorted(self._data)})"
