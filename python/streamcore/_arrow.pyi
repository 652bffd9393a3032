"""Stubs for the native module ``streamcore._arrow`` (Arrow buffer helpers)."""

import pyarrow as pa

def row_nbytes(batch: pa.RecordBatch) -> pa.UInt32Array:
    """Per-record byte sizes: fixed widths plus offset width and value length of var-length columns."""

def sequence(first: int, n: int) -> pa.UInt64Array:
    """``first, first + 1, ..., first + n - 1``."""

def scatter_sequences(order: pa.Int64Array, starts: list[int], counts: list[int]) -> pa.UInt64Array:
    """Seq of every input row, in input order, after grouping rows by shard with ``order``."""
