"""The command line (``python -m streamcore demo | bench``) and the example scripts, end to end.

Each runs as a subprocess of ``sys.executable`` with this process's
environment, plus the folder this process imported ``streamcore`` from, so the
tests exercise the same build whether streamcore is installed or built in
place and found through ``PYTHONPATH=python``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa

import streamcore
from streamcore import demo

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 180


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    package_root = str(Path(streamcore.__file__).resolve().parent.parent)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if package_root not in paths:
        env["PYTHONPATH"] = os.pathsep.join([package_root, *paths])
    env["COLUMNS"] = "120"
    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def test_demo_runs_and_reports(tmp_path: Path) -> None:
    proc = run("-m", "streamcore", "demo", "--events", "20000", cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    out = proc.stdout
    assert "20,000" in out
    assert "records/s" in out
    assert "checkpoints" in out
    assert "top 5 users by count" in out
    assert out.count("user-") >= 5


def test_bench_quick_partition_writes_results(tmp_path: Path) -> None:
    out_dir = tmp_path / "results"
    proc = run(
        "-m",
        "streamcore",
        "bench",
        "--quick",
        "--only",
        "partition",
        "--out",
        out_dir,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, explain(proc)
    assert "partition" in proc.stdout
    results = json.loads((out_dir / "results.json").read_text())
    assert results["meta"]["quick"] is True
    assert list(results["workloads"]) == ["partition"]
    partition = results["workloads"]["partition"]
    assert "error" not in partition, partition
    assert partition["throughput"] > 0 and partition["baseline"] > 0
    assert partition["ratio"] == partition["throughput"] / partition["baseline"]
    assert {t["what"] for t in partition["targets"]} == {"ratio", "native keys/s"}
    assert partition["params"]["keys"] == 200_000


def test_quickstart_example(tmp_path: Path) -> None:
    proc = run(REPO / "examples" / "quickstart.py", cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert "records done: 5" in proc.stdout
    assert "checkpoints: {'handle': {0: 1, 1: 2}}" in proc.stdout


def test_clickstream_example(tmp_path: Path) -> None:
    proc = run(REPO / "examples" / "clickstream.py", "50000", cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    lines = proc.stdout.splitlines()
    windows = len(demo.minute_chunks(demo.make_events(50_000)))
    assert lines[-1] == f"50,000 events in {windows} one-minute windows"
    assert len(lines) == 1 + min(windows, 3)
    assert all(" users, " in line and "; top user-" in line for line in lines[:-1])


def test_cli_rejects_unknown_command(tmp_path: Path) -> None:
    proc = run("-m", "streamcore", "no-such-command", cwd=tmp_path)
    assert proc.returncode == 2, explain(proc)
    assert "usage:" in proc.stderr


def test_demo_events_are_deterministic_and_skewed() -> None:
    events = demo.make_events(50_000)
    assert events.schema == pa.schema(
        [
            ("user_id", pa.utf8()),
            ("page", pa.utf8()),
            ("ts", pa.timestamp("ms", tz="UTC")),
            ("value", pa.float64()),
        ]
    )
    assert events.equals(demo.make_events(50_000))
    counts = sorted(
        (c["counts"] for c in events["user_id"].value_counts().to_pylist()), reverse=True
    )
    assert counts[0] > 50 * counts[len(counts) // 2]  # a few hot users, a long tail
    assert all(u.startswith("user-") and len(u) == 10 for u in events["user_id"].to_pylist()[:100])
