"""Stubs for the native module ``streamcore._queue`` (the message state machine of ``MemoryQueue``)."""

from collections.abc import Sequence
from typing import Any, final

import pyarrow as pa

SENT_TYPE: pa.DataType

def constant_int64(value: int, n: int) -> pa.Int64Array:
    """An int64 array of ``n`` times ``value``."""

def index_ids(prefix: bytes, first: int, n: int) -> pa.StringArray:
    """Message ids of ``first .. first + n - 1`` as a ``pyarrow.string()`` array."""

def format_ids(prefix: bytes, indices: pa.Int64Array) -> pa.StringArray:
    """Message ids of ``indices`` as a ``pyarrow.string()`` array."""

def id_list(prefix: bytes, first: int, n: int) -> list[str]:
    """Message ids of ``first .. first + n - 1`` as a list of ``str``."""

def parse_ids(prefix: bytes, ids: Sequence[Any], strict: bool = True) -> pa.Int64Array:
    """Indices of message ids; a foreign id raises ``ValueError`` (``strict``) or maps to -1."""

@final
class QueueCore:
    """Per-message state of one queue: visibility, receive counts, delays, groups."""

    @property
    def base(self) -> int: ...
    @property
    def end(self) -> int: ...
    @property
    def fifo(self) -> bool: ...
    @property
    def retention_ms(self) -> int: ...
    @property
    def n_visible(self) -> int: ...
    @property
    def n_in_flight(self) -> int: ...
    @property
    def n_delayed(self) -> int: ...
    @property
    def prefix_bytes(self) -> bytes: ...
    def __init__(self, fifo: bool, retention: float, prefix: bytes) -> None: ...
    def append(
        self,
        n: int,
        now: float,
        delay: float,
        groups: pa.Int32Array | None = None,
        sizes: pa.UInt32Array | None = None,
    ) -> int:
        """Add ``n`` messages sent at ``now``; returns the index of the first."""
    def receive(
        self,
        max_n: int,
        now: float,
        visibility: float,
        max_receive_count: int = 0,
        max_bytes: int = 0,
    ) -> tuple[
        int,
        int,
        int,
        pa.Int64Array | None,
        pa.Int64Array | None,
        int,
        int,
        int,
        int,
        int,
        pa.Int64Array | None,
    ]:
        """``(n, first, last, indices, counts, max_receive_count, last_sent_ms, first_receives,
        chunk, offset, redriven)`` of a receive."""
    def settle(
        self,
        first: int,
        n: int,
        indices: pa.Int64Array | None,
        counts: pa.Int64Array | None,
        rc: int,
        skip: bytes | None = None,
    ) -> int:
        """Delete a received batch by its receipt, except the ``skip`` positions; returns deletes."""
    def release(
        self,
        first: int,
        n: int,
        indices: pa.Int64Array | None,
        counts: pa.Int64Array | None,
        rc: int,
        now: float,
    ) -> None:
        """The messages of a received batch still in flight with that receipt become visible now."""
    def positions(
        self, wanted: pa.Int64Array, first: int, n: int, indices: pa.Int64Array | None
    ) -> list[int]:
        """Position of each of ``wanted`` in a batch (-1: not in it)."""
    def batch_columns(
        self, first: int, n: int, indices: pa.Int64Array | None, counts: pa.Int64Array | None, rc: int
    ) -> tuple[pa.Int64Array, pa.Int64Array]:
        """``(indices, counts)`` of a batch as int64 arrays."""
    def delete(self, indices: pa.Int64Array) -> int:
        """Delete messages by index, whatever their state; returns how many were deleted."""
    def change_visibility(
        self, indices: pa.Int64Array, receive_counts: pa.Int64Array | None, timeout: float, now: float
    ) -> int:
        """Messages in flight become visible ``timeout`` seconds from ``now``; returns how many changed."""
    def advance(self, now: float) -> None:
        """Apply retention and every timer due at ``now``."""
    def counts(self, now: float) -> tuple[int, int, int]:
        """``(visible, in_flight, delayed)`` at ``now``."""
    def receivable(self, now: float) -> bool:
        """True when a receive at ``now`` would get (or redrive) a message."""
    def next_due(self, now: float) -> float:
        """Clock time of the next timer after ``now``, or inf."""
    def oldest_sent_ms(self) -> int | None:
        """Send time (epoch ms) of the oldest message not yet final, or None."""
    def take_dead_chunks(self) -> list[int]:
        """First indices of the chunks whose messages all became final since the last call."""
    def take_freed_groups(self) -> list[int]:
        """Group indices that became empty since the last call."""
    def segments(self, indices: pa.Int64Array) -> list[tuple[int, int, int, int]]:
        """``[(chunk_first, position, count, first)]`` of ascending ``indices``."""
    def ids(self, first: int, n: int) -> list[str]:
        """Message ids of ``first .. first + n - 1``."""
    def parse(self, ids: Sequence[Any], strict: bool = True) -> pa.Int64Array:
        """Indices of message ids of this queue."""
    def __len__(self) -> int: ...
