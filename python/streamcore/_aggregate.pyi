"""Stubs for the native module ``streamcore._aggregate`` (keyed aggregation of Arrow columns)."""

from typing import Any, Final, final

import pyarrow as pa
from typing_extensions import Self, disjoint_base

WANT_SUM: Final[int]
WANT_MEAN: Final[int]
WANT_MIN: Final[int]
WANT_MAX: Final[int]

def floor_multiple(arr: pa.Array, size: int) -> pa.Array:
    """``floor(value / size) * size`` of every element of an int64 or uint64 array."""

def background_folds(enabled: bool | None = None) -> bool:
    """Whether small ``update_batch(background=True)`` calls fold on the background thread; set it."""

def background_stats() -> tuple[int, int, int]:
    """(folds queued, run by the background thread, taken back by their table), for tests."""

def key_hashes(arr: pa.Array) -> pa.Array:
    """The uint64 hash a ``GroupTable`` gives each element of a binary or utf8 array."""

@final
class Handed:
    """Per thread, the records streamcore handed the handler running on it."""

    records: pa.RecordBatch | None
    source: BatchBinding | None
    offset: int

handed: Handed

@disjoint_base
class AggregatorCore:
    """The native part of ``streamcore.Aggregator`` (its base class)."""

    _s: Any
    _plan: Any
    _table: GroupTable | None
    def update(self, records: Any) -> None:
        """Fold records into the groups (see ``Aggregator``)."""
    def copy(self) -> Self:
        """An independent copy, in constant time: the groups are shared copy-on-write."""
    def __copy__(self) -> Self: ...
    def __deepcopy__(self, memo: dict[int, Any]) -> Self: ...
    def __len__(self) -> int: ...
    @property
    def nbytes(self) -> int:
        """Bytes held for the groups."""
    def _nbytes_bound(self) -> int:
        """``nbytes``, or an upper bound of it while a background fold runs (no wait)."""

def copy_window_state(state: dict[str, Any]) -> dict[str, Any]:
    """A private copy of a window's state for one invocation (aggregators copied natively)."""

def aggregators_nbytes(state: dict[str, Any], limit: int | None = None) -> int:
    """``windows.state_nbytes`` of a state of aggregators only, -1 for any other state."""

@final
class BatchBinding:
    """Where a record batch's columns are, found once for all the slices cut from it."""

    @property
    def batch(self) -> pa.RecordBatch: ...
    def __init__(self, batch: pa.RecordBatch) -> None: ...

@final
class GroupTable:
    """Per-group accumulators over an open-addressing hash table of group keys."""

    def __init__(
        self,
        key_names: list[str],
        key_types: list[pa.DataType],
        value_names: list[str],
        value_types: list[pa.DataType],
        value_flags: list[int],
    ) -> None: ...
    def __len__(self) -> int: ...
    def copy(self) -> GroupTable:
        """An independent table with the same spec and groups, in constant time (copy-on-write)."""
    def nbytes(self, bound: bool = False) -> int:
        """Bytes held for the groups (``bound``: an upper bound while a background fold runs)."""
    def clear(self) -> None:
        """Forget every group and release the memory."""

    def update(self, key_arrays: list[pa.Array], value_arrays: list[pa.Array]) -> None:
        """Fold rows: one equal-length array per key and value column."""

    def update_batch(
        self,
        batch: pa.RecordBatch,
        key_idx: list[int],
        value_idx: list[int],
        background: bool = False,
        source: BatchBinding | None = None,
        offset: int = 0,
    ) -> None:
        """Fold a record batch: the positions of its key columns, then of its value columns
        (``background``: maybe on the background thread, after the call returns; ``source``:
        the binding of the batch ``batch`` was sliced from, at row ``offset``)."""

    def input_types(self) -> list[pa.DataType]:
        """The key column types, then the value column types."""

    def state_schema(self) -> pa.Schema:
        """The schema of ``state_columns``: names and types."""

    def merge_state(self, columns: list[pa.Array]) -> None:
        """Fold a partial state: one array per field of ``state_schema()``, in order."""

    def state_columns(self) -> list[pa.Array]:
        """The partial state as arrays, one per field of ``state_schema()``."""

    def result_batch(self, names: list[str], layout: list[tuple[str, int]]) -> pa.RecordBatch:
        """The groups in order of first appearance: the key columns, then per ``(op, value
        column index)`` of ``layout`` (``op``: count, sum, min, max, mean) one column."""
