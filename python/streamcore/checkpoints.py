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
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ShardProgress:
    """What a consumer has done on one shard.

    Attributes
    ----------
    checkpoint : int
        Highest seq with every record up to it done; -1 when none is.
    lanes : list[int]
        Each lane's last done seq (-1: none); its length is the lane count.
    windows : bytes or None
        Serialised open tumbling-window state, if any.
    """

    checkpoint: int
    lanes: list[int] = field(default_factory=list)
    windows: bytes | None = None


class CheckpointStore:
    """Interface of a checkpoint store. Implementations are thread-safe."""

    def load(self, consumer: str) -> dict[int, ShardProgress]:
        """The last saved progress of every shard of ``consumer`` (absent: none saved)."""
        raise NotImplementedError

    def save(self, consumer: str, progress: dict[int, ShardProgress]) -> None:
        """Record new progress for some shards of ``consumer``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the store's resources (locks, files)."""


class MemoryCheckpoints(CheckpointStore):
    """Checkpoints in memory, shareable between App instances of one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, dict[int, ShardProgress]] = {}

    def load(self, consumer: str) -> dict[int, ShardProgress]:
        with self._lock:
            return dict(self._data.get(consumer, {}))

    def save(self, consumer: str, progress: dict[int, ShardProgress]) -> None:
        with self._lock:
            self._data.setdefault(consumer, {}).update(progress)

    def __repr__(self) -> str:
        return f"MemoryCheckpoints(consumers={sorted(self._data)})"
