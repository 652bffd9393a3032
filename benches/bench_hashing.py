"""Micro-benchmark: XXH64 of 2M string keys, native hash_array vs a Python loop over xxhash.

Run with ``python -m streamcore.benches.bench_hashing`` (installed) or
``python benches/bench_hashing.py`` (checkout, after ``build_ext --inplace``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pyarrow as pa
import xxhash

from streamcore import _hashing

N_KEYS = 2_000_000
RANDOM_SEED = 20240601
HASH_SEED = 0


def make_keys(n: int = N_KEYS, random_seed: int = RANDOM_SEED) -> list[str]:
    """``user-<n>`` keys with Zipf-like user ids: a few hot users, a long tail."""
    rng = random.Random(random_seed)
    return [f"user-{int(rng.paretovariate(1.1))}" for _ in range(n)]


def best_seconds(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    keys = make_keys()
    array = pa.array(keys, type=pa.utf8())
    n = len(keys)

    native = _hashing.hash_array(array, HASH_SEED)
    python = [xxhash.xxh64_intdigest(s.encode(), HASH_SEED) for s in keys]
    if native.to_pylist() != python:
        raise SystemExit("hash_array disagrees with xxhash.xxh64_intdigest")

    def python_loop() -> list[int]:
        digest = xxhash.xxh64_intdigest
        return [digest(s.encode(), HASH_SEED) for s in keys]

    native_s = best_seconds(lambda: _hashing.hash_array(array, HASH_SEED), repeat=7)
    python_s = best_seconds(python_loop, repeat=3)

    print(f"keys: {n:,} utf8 'user-<n>' (Zipf-like), {array.nbytes / n:.1f} bytes/key in Arrow")
    print(f"{'hash_array (native, GIL released)':<42}{n / native_s / 1e6:8.1f} M keys/s")
    print(f"{'python loop xxh64_intdigest(s.encode())':<42}{n / python_s / 1e6:8.1f} M keys/s")
    print(f"{'ratio':<42}{python_s / native_s:8.1f} x")


if __name__ == "__main__":
    main()
