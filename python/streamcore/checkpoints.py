"""Checkpoint stores: where each consumer's per-shard progress is kept.

A checkpoint is the highest seq S of a shard such that every record with
seq <= S is done (SEMANTICS 0.3). ``MemoryCheckpoints`` keeps them in this
process and can be shared by several App instances, so a new App resumes
where an old one stopped.
"""

from __future__ import annotations

import threading


class CheckpointStore:
    """Interface of a checkpoint store. Implementations are thread-safe."""

    def load(self, consumer: str) -> dict[int, int]:
        """Last saved checkpoint of every shard of ``consumer`` (absent: none saved)."""
        raise NotImplementedError

    def save(self, consumer: str, checkpoints: dict[int, int]) -> None:
        """Record new checkpoints for some shards of ``consumer``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the store's resources."""


class MemoryCheckpoints(CheckpointStore):
    """Checkpoints in memory, shareable between App instances of one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, dict[int, int]] = {}

    def load(self, consumer: str) -> dict[int, int]:
        with self._lock:
            return dict(self._data.get(consumer, {}))

    def save(self, consumer: str, checkpoints: dict[int, int]) -> None:
        with self._lock:
            self._data.setdefault(consumer, {}).update(checkpoints)

    def __repr__(self) -> str:
        return f"MemoryCheckpoints(consumers={sorted(self._data)})"
