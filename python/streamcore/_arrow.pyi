"""Stubs for the native module ``streamcore._arrow`` (Arrow buffer helpers, the two-thread task runner)."""

import pyarrow as pa

def parallel_config(threads: int | None = None, min_rows: int | None = None) -> tuple[int, int]:
    """Set the threads (1 or 2) and the fewest rows of calls split across threads; returns the previous."""

def helper_tasks() -> int:
    """How many tasks the helper thread has run since import."""

def row_nbytes(batch: pa.RecordBatch | list[pa.Array], groups: list[int] | None = None) -> pa.UInt32Array:
    """Per-record byte sizes: fixed widths plus offset width and value length of var-length columns.

    With ``groups``, nested columns count their average per group of consecutive rows.
    """

def sequence(first: int, n: int) -> pa.UInt64Array:
    """``first, first + 1, ..., first + n - 1``."""

def ranges(firsts: list[int], counts: list[int]) -> pa.UInt64Array:
    """Runs of ``counts[g]`` consecutive values from ``firsts[g]``, concatenated."""

def repeat64(value: int, n: int, dtype: pa.DataType) -> pa.Array:
    """``value`` ``n`` times as an array of ``dtype``, a 64-bit fixed-width type."""

def scatter_sequences(order: pa.Int64Array, starts: list[int], counts: list[int]) -> pa.UInt64Array:
    """Seq of every input row, in input order, after grouping rows by shard with ``order``."""

def scatter_groups(
    order: pa.Int64Array, starts: list[int], counts: list[int], ids: list[int]
) -> tuple[pa.Int64Array, pa.UInt64Array]:
    """Group id and seq of every input row, in input order, after grouping rows with ``order``."""

def gather(arrays: list[pa.Array], order: pa.Int32Array | pa.Int64Array) -> list[pa.Array]:
    """``[a.take(order) for a in arrays]`` for a permutation ``order``, natively where the type allows.

    From ``parallel_config``'s ``min_rows`` rows on, each column's halves are gathered on two threads.
    """
