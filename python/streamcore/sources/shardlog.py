"""One shard's records in memory: an append-only list of Arrow batches with seqs.

Every chunk is one ``put``'s records for this shard, stored with what the
dispatcher needs to assemble batches without touching Arrow again: the byte
size of every record and the chunk's arrival time. Key hashes are not kept
(8 bytes a record): a consumer with several lanes hashes the keys it reads. Retention
drops whole chunks by age.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True, slots=True)
class Chunk:
    first_seq: int
    records: pa.RecordBatch  # seq, key, arrival, payload...
    sizes: pa.UInt32Array
    arrival_ms: int
    end_seq: int  # one past the last seq: kept, read on every ingest


class ShardLog:
    """Append-only, seq-addressed records of one shard. The owning stream serialises writes."""

    def __init__(self, shard_id: int, start: int, end: int, parents: tuple[int, ...] = ()) -> None:
        self.shard_id = shard_id
        self.range_start = start  # hash range [start, end) this shard owns
        self.range_end = end
        # Resharding (SEMANTICS 0.6): the shards this one was split or merged from,
        # those made from it, and whether it still takes puts.
        self.parents = parents
        self.children: tuple[int, ...] = ()
        self.closed = False
        self._chunks: list[Chunk] = []
        self._starts: list[int] = []
        self.next_seq = 0  # seq the next appended record gets
        self.trim_seq = 0  # first seq still retained
        self.schema = pa.schema(
            [("seq", pa.uint64()), ("key", pa.binary()), ("arrival", pa.timestamp("ms", tz="UTC"))]
        )
        self._empty: pa.RecordBatch | None = None

    def append(self, records: pa.RecordBatch, sizes: pa.Array, arrival_ms: int) -> None:
        chunk = Chunk(self.next_seq, records, sizes, arrival_ms, self.next_seq + records.num_rows)
        if not records.schema.equals(self.schema):
            self.schema = records.schema
            self._empty = None
        self._chunks.append(chunk)
        self._starts.append(chunk.first_seq)
        self.next_seq = chunk.end_seq

    def chunks_from(self, seq: int) -> Iterator[tuple[Chunk, int]]:
        """Chunks holding seqs >= ``seq``, each with the index of its first such record.

        Lazy: a reader usually wants only the next few chunks of a long log.
        """
        chunks = self._chunks
        for i in range(max(bisect.bisect_right(self._starts, seq) - 1, 0), len(chunks)):
            chunk = chunks[i]
            if chunk.end_seq > seq:
                yield chunk, max(seq - chunk.first_seq, 0)

    def read(self, first_seq: int, count: int) -> pa.RecordBatch:
        """Records ``first_seq .. first_seq + count - 1``: a zero-copy slice within one chunk."""
        i = bisect.bisect_right(self._starts, first_seq) - 1
        chunk = self._chunks[i]
        offset = first_seq - chunk.first_seq
        if first_seq + count <= chunk.end_seq:  # end_seq: no call into pyarrow for num_rows
            return chunk.records.slice(offset, count)
        parts = []
        remaining = count
        while remaining:
            part = chunk.records.slice(offset, remaining)
            parts.append(part)
            remaining -= part.num_rows
            i += 1
            offset = 0
            if remaining:
                chunk = self._chunks[i]
        return pa.concat_batches(parts)

    def read_slice(self, first_seq: int, count: int) -> tuple[pa.RecordBatch, pa.RecordBatch | None, int]:
        """``read``, and the stored batch the records are a slice of and where they start in it.

        The batch is None when the records span chunks (they are a copy then).
        """
        i = bisect.bisect_right(self._starts, first_seq) - 1
        chunk = self._chunks[i]
        offset = first_seq - chunk.first_seq
        if first_seq + count <= chunk.end_seq:
            return chunk.records.slice(offset, count), chunk.records, offset
        return self.read(first_seq, count), None, 0

    def empty(self) -> pa.RecordBatch:
        """No records, with this shard's schema (what a closing window invocation gets)."""
        empty = self._empty
        if empty is None:  # made once per schema: building one costs ~100 us
            empty = self._empty = pa.RecordBatch.from_pylist([], schema=self.schema)
        return empty

    def chunk_start(self, seq: int) -> int:
        """First seq of the chunk holding ``seq``."""
        return self._starts[bisect.bisect_right(self._starts, seq) - 1]

    def take(self, base: int, last_seq: int, offsets: pa.Array) -> pa.RecordBatch:
        """Records at seqs ``base + offsets``; ``base`` is a chunk start, ``last_seq`` the last seq."""
        i = bisect.bisect_right(self._starts, base) - 1
        j = bisect.bisect_right(self._starts, last_seq)
        if j - i == 1:
            return self._chunks[i].records.take(offsets)
        table = pa.Table.from_batches([c.records for c in self._chunks[i:j]])
        return table.take(offsets).combine_chunks().to_batches()[0]

    def seq_at_time(self, epoch_ms: int) -> int:
        """First seq whose arrival is at or after ``epoch_ms`` (``next_seq`` if none)."""
        for chunk in self._chunks:
            if chunk.arrival_ms >= epoch_ms:
                return chunk.first_seq
        return self.next_seq

    def expire(self, before_ms: int) -> int:
        """Drop whole chunks that arrived before ``before_ms``; returns records dropped."""
        k = 0
        while k < len(self._chunks) and self._chunks[k].arrival_ms < before_ms:
            k += 1
        if not k:
            return 0
        dropped = self._chunks[k - 1].end_seq - self.trim_seq
        del self._chunks[:k]
        del self._starts[:k]
        self.trim_seq = self._chunks[0].first_seq if self._chunks else self.next_seq
        return dropped

    def __len__(self) -> int:
        return self.next_seq - self.trim_seq
