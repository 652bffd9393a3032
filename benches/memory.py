"""Memory: resident memory per million records held in a ``MemoryStream``, against raw Arrow bytes.

The parent writes ``RECORDS`` click events (``streamcore.demo.make_events``:
user_id, page, ts, value) to an Arrow IPC file in batches of ``CHUNK``. Each
measurement then runs in a fresh subprocess (``sys.executable -c``), so none
inherits another's heap or the garbage of making the data. A child imports
pyarrow and streamcore, reads its resident set (``VmRSS`` in
``/proc/self/status``), reads the file one batch at a time into memory and either

- ``stream``: puts each batch into ``MemoryStream(shards=8)`` and drops it, or
- ``arrow``: keeps the batches (plain pyarrow, the floor),

then reports its peak resident set (``VmHWM``, the high-water mark) and its
resident set at the end, both less the starting one, with the raw Arrow bytes
of the records (``RecordBatch.nbytes``), the bytes pyarrow's memory pool
holds for them (``total_allocated_bytes``; RSS is more: the allocator keeps
freed pages) and a checksum of what it holds (rows
and the sum of ``value``).

Headline: peak RSS growth per million records in the stream (lower is
better), against the raw Arrow bytes of the same records. The stream keeps, on
top of the payload, ``seq`` and ``arrival`` columns and per-record sizes (about
20 bytes a record); key hashes are recomputed by consumers that need them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa

from streamcore.benches.common import SEED, SHARDS, result, target
from streamcore.demo import make_events

RECORDS = 2_000_000
QUICK_RECORDS = 200_000
CHUNK = 50_000
TARGET_RSS_OVER_RAW = 2.0

# The child: argv = kind, records, chunk, seed, shards. Prints one JSON line.
# The child: argv = kind, path of an Arrow IPC file of the records, shards. Prints one JSON line.
CHILD = r"""
import json, sys

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)

import pyarrow as pa
import pyarrow.compute as pc
import streamcore as sc

kind, path, shards = sys.argv[1], sys.argv[2], int(sys.argv[3])
start = status("VmRSS")
pool_start = pa.total_allocated_bytes()
stream = sc.MemoryStream(shards=shards) if kind == "stream" else None
held = []
raw = 0
with pa.OSFile(path) as source:
    reader = pa.ipc.open_file(source)
    for i in range(reader.num_record_batches):
        batch = reader.get_batch(i)  # read into memory (the default pool), not mapped
        raw += batch.nbytes
        if stream is not None:
            stream.put(batch, key="user_id")
        else:
            held.append(batch)
        del batch
rows = 0
value_sum = 0.0
if stream is not None:
    for shard in stream.shard_ids:
        for chunk, first in stream.shard_log(shard).chunks_from(0):
            part = chunk.records.slice(first)
            rows += part.num_rows
            value_sum += pc.sum(part.column("value")).as_py() or 0.0
else:
    rows = sum(b.num_rows for b in held)
    value_sum = sum(pc.sum(b.column("value")).as_py() for b in held)
print(json.dumps({
    "kind": kind,
    "peak_bytes": status("VmHWM") - start,
    "end_bytes": status("VmRSS") - start,
    "pool_bytes": pa.total_allocated_bytes() - pool_start,
    "raw_bytes": raw,
    "rows": rows,
    "value_sum": value_sum,
    "pool": pa.default_memory_pool().backend_name,
}))
"""


def write_records(path: Path, n: int) -> None:
    """``n`` click events as an Arrow IPC file of ``CHUNK``-row batches."""
    events = make_events(n, seed=SEED)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, events.schema) as writer:
        for batch in events.to_batches(max_chunksize=CHUNK):
            writer.write_batch(batch)


def measure(kind: str, path: Path) -> dict[str, Any]:
    """One clean subprocess holding the records of ``path`` as ``kind``; its report."""
    args = [sys.executable, "-c", CHILD, kind, str(path), str(SHARDS)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory child {kind!r} failed:\n{done.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def run(quick: bool) -> dict[str, Any]:
    n = QUICK_RECORDS if quick else RECORDS
    folder = Path(tempfile.mkdtemp(prefix="streamcore-memory-"))
    try:
        path = folder / "events.arrow"
        write_records(path, n)
        stream = measure("stream", path)
        arrow = measure("arrow", path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    per_million = 1e6 / n
    mib = 2**20
    stream_peak = stream["peak_bytes"] * per_million
    stream_end = stream["end_bytes"] * per_million
    arrow_peak = arrow["peak_bytes"] * per_million
    raw = stream["raw_bytes"] * per_million
    return result(
        "memory",
        description=(
            f"{n:,} click events (user_id, page, ts, value) put into MemoryStream(shards={SHARDS}) "
            f"in chunks of {CHUNK:,}; peak RSS growth in a fresh subprocess, per million records"
        ),
        unit="MiB/M rec",
        throughput=stream_peak / mib,
        baseline=raw / mib,
        baseline_description="raw Arrow bytes of the same records (Table.nbytes)",
        targets=[target("peak RSS / raw Arrow bytes", stream_peak / raw, "<=", TARGET_RSS_OVER_RAW, "x")],
        figures={
            "records": n,
            "stream_peak_mib_per_million": stream_peak / mib,
            "stream_end_mib_per_million": stream_end / mib,
            "arrow_tables_peak_mib_per_million": arrow_peak / mib,
            "raw_arrow_mib_per_million": raw / mib,
            "stream_bytes_per_record": stream["peak_bytes"] / n,
            "stream_pool_bytes_per_record": stream["pool_bytes"] / n,
            "arrow_tables_pool_bytes_per_record": arrow["pool_bytes"] / n,
            "raw_bytes_per_record": stream["raw_bytes"] / n,
            "stream_peak_over_raw": stream_peak / raw,
            "stream_end_over_raw": stream_end / raw,
            "arrow_tables_peak_over_raw": arrow_peak / raw,
        },
        params={"records": n, "chunk": CHUNK, "shards": SHARDS, "pool": stream["pool"], "quick": quick},
        checksum={"rows": stream["rows"], "value_sum": stream["value_sum"]},
        baseline_checksum={"rows": arrow["rows"], "value_sum": arrow["value_sum"]},
        lower_is_better=True,
        series={
            "bars": {
                "MemoryStream (peak RSS)": stream_peak / mib,
                "pyarrow tables (peak RSS)": arrow_peak / mib,
                "raw Arrow bytes": raw / mib,
            }
        },
    )
