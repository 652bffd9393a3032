"""Stubs for the native module ``streamcore._hashing`` (XXH64 of keys)."""

import pyarrow as pa

def xxh64(data: bytes | bytearray | memoryview, seed: int = 0) -> int:
    """XXH64 of a bytes-like object, equal to ``xxhash.xxh64_intdigest(data, seed)``."""

def hash_array(keys: pa.Array | pa.ChunkedArray, seed: int = 0) -> pa.UInt64Array:
    """XXH64 of every key (SEMANTICS 0.3), as a new ``uint64`` array."""

def check_keys(keys: pa.Array | pa.ChunkedArray) -> None:
    """Raise as ``hash_array(keys)`` would, without hashing."""
