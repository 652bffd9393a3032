"""``MemoryStream.put`` (and ``LocalLog.put``, which shares its path) against a plain-Python model.

The model hashes each key with ``xxhash`` (SEMANTICS 0.3: XXH64, seed 0, over
the key's bytes; integers as 8-byte little-endian int64), finds its shard by
the hash ranges of ``_partition.even_ranges``, and gives each shard's rows
consecutive seqs in arrival order. Checked: every row's ``shard`` and ``seq``,
and each shard's stored records (seq, key, payload) and sizes.
"""

from __future__ import annotations

import bisect
import tempfile
from typing import Any

import pyarrow as pa
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

import streamcore as sc
from streamcore import _arrow, _partition
from streamcore.sources.memory import MemoryStream

KEY_TYPES = {
    "utf8": (pa.utf8(), st.text(max_size=12)),
    "large_utf8": (pa.large_utf8(), st.text(max_size=12)),
    "binary": (pa.binary(), st.binary(max_size=40)),
    "int64": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    "int8": (pa.int8(), st.integers(-128, 127)),
    "uint64": (pa.uint64(), st.integers(0, 2**64 - 1)),
}


def _key_bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return value
    return (value & (2**64 - 1)).to_bytes(8, "little")  # as an int64 (uint64: its own bits)


def _var_size(value: Any, width: int) -> int:
    return width + len(_key_bytes(value))


def _size_of(value: Any, type_: pa.DataType) -> int:
    if pa.types.is_large_string(type_) or pa.types.is_large_binary(type_):
        return _var_size(value, 8)
    if pa.types.is_string(type_) or pa.types.is_binary(type_):
        return 4 + (0 if value is None else len(_key_bytes(value)))
    return type_.bit_width // 8


Case = tuple[str, str, int, list[list[Any]], list[int]]  # key kind, how keys are given, shards, puts, cuts


@st.composite
def _puts(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from(sorted(KEY_TYPES)))
    modes = ["key", "named", "keys="] if kind in ("utf8", "binary", "int64") else ["key", "named"]
    mode = draw(st.sampled_from(modes))
    shards = draw(st.sampled_from([1, 2, 3, 7, 64, 255, 256, 257]))
    sizes = draw(st.lists(st.sampled_from([1, 2, 3, 63, 64, 65, 130, 700]), min_size=1, max_size=3))
    values = KEY_TYPES[kind][1]
    puts = [draw(st.lists(values, min_size=n, max_size=n)) for n in sizes]
    cuts = [draw(st.integers(0, n)) for n in sizes]  # where each put's table is cut into two chunks
    return kind, mode, shards, puts, cuts


def _check(
    stream: MemoryStream, kind: str, mode: str, shards: int, puts: list[list[Any]], cuts: list[int]
) -> None:
    key_type = KEY_TYPES[kind][0]
    starts = _partition.even_ranges(shards)
    next_seq = [0] * shards
    stored: list[list[tuple[int, Any, int, str]]] = [[] for _ in range(shards)]
    for p, (key_values, cut) in enumerate(zip(puts, cuts, strict=True)):
        n = len(key_values)
        v = [p * 1000 + i for i in range(n)]
        s = [f"p{p}r{i}" * (i % 3) for i in range(n)]
        pad = pa.array(key_values[:1] * 2 + key_values, key_type).slice(2)  # an offset into its buffers
        if mode == "keys=":
            table = pa.table({"v": pa.array(v, pa.int64()), "s": pa.array(s, pa.utf8())})
        else:
            name = "key" if mode == "key" else "user"
            table = pa.table({name: pad, "v": pa.array(v, pa.int64()), "s": pa.array(s, pa.utf8())})
        table = pa.concat_tables([table.slice(0, cut), table.slice(cut)])  # chunked columns
        if mode == "keys=":
            got = stream.put(table, keys=key_values)
        elif mode == "key":
            got = stream.put(table)
        else:
            got = stream.put(table, key="user")
        want_shard, want_seq = [], []
        for i, key in enumerate(key_values):
            owner = bisect.bisect_right(starts, xxhash.xxh64_intdigest(_key_bytes(key))) - 1
            want_shard.append(owner)
            want_seq.append(next_seq[owner])
            next_seq[owner] += 1
            stored[owner].append((want_seq[-1], key, v[i], s[i]))
        assert got.schema.field("shard").type == pa.int64() and got.schema.field("seq").type == pa.uint64()
        assert got.column("shard").to_pylist() == want_shard
        assert got.column("seq").to_pylist() == want_seq
    for owner in range(shards):
        log = stream.shard_log(owner)
        rows: list[tuple[int, Any, int, str]] = []
        sizes: list[int] = []
        for chunk, _ in log.chunks_from(0):
            records = chunk.records
            assert chunk.sizes.type == pa.uint32()
            assert records.schema.names[:3] == ["seq", "key", "arrival"]
            cols = records.to_pydict()
            rows += zip(cols["seq"], cols["key"], cols["v"], cols["s"], strict=True)
            key_col_type = records.schema.field("key").type
            for key, text in zip(cols["key"], cols["s"], strict=True):
                size = 8 + _size_of(key, key_col_type) + 8 + 8 + _size_of(text, pa.utf8())
                if mode == "named":
                    size += _size_of(key, key_type)  # the key column is also a payload column
                sizes.append(size)
            assert chunk.sizes.to_pylist() == sizes[len(sizes) - records.num_rows :]
        assert rows == stored[owner]
        if mode == "named":
            for chunk, _ in log.chunks_from(0):
                assert chunk.records.column("user").equals(chunk.records.column("key"))


@settings(max_examples=60, deadline=None)
@given(case=_puts(), threads=st.sampled_from([1, 2]))
def test_memory_stream_put_matches_model(case: Case, threads: int) -> None:
    previous = _arrow.parallel_config(threads=threads, min_rows=1)
    try:
        _check(MemoryStream(case[2], clock=sc.VirtualClock()), *case)
    finally:
        _arrow.parallel_config(*previous)


@settings(max_examples=15, deadline=None)
@given(case=_puts(), threads=st.sampled_from([1, 2]))
def test_local_log_put_matches_model(case: Case, threads: int) -> None:
    previous = _arrow.parallel_config(threads=threads, min_rows=1)
    try:
        with tempfile.TemporaryDirectory() as path:
            log = sc.LocalLog(path, case[2], clock=sc.VirtualClock(), fsync="never")
            try:
                _check(log, *case)
            finally:
                log.close()
    finally:
        _arrow.parallel_config(*previous)
