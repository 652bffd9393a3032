"""Stubs for the native module ``streamcore._partition`` (hash-range sharding)."""

import pyarrow as pa

def even_ranges(n_shards: int) -> list[int]:
    """Range starts ``floor(i * 2**64 / n)`` of ``n`` equal shards."""

def partition(
    hashes: pa.UInt64Array, starts: list[int]
) -> tuple[pa.Int32Array, pa.Int64Array, list[int]]:
    """``(owner range per row, stable permutation grouped by range, rows per range)``."""

def assign(
    hashes: pa.UInt64Array, starts: list[int], ids: list[int], firsts: list[int]
) -> tuple[pa.Int32Array | pa.Int64Array, list[int], pa.Int64Array, pa.UInt64Array]:
    """``(stable permutation grouped by range, rows per range, shard id per row, seq per row)``.

    The permutation is int32 below 2**31 rows, else int64.
    """

def assign_keys(
    keys: pa.Array, starts: list[int], ids: list[int], firsts: list[int]
) -> tuple[pa.Int32Array | pa.Int64Array, list[int], pa.Int64Array, pa.UInt64Array, pa.UInt64Array]:
    """``assign(hash_array(keys), ...)`` without the hashes array, and the seqs in ``order``'s order."""
