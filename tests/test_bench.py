"""``python -m streamcore bench --quick``: the whole suite as CI runs it, end to end.

Runs as a subprocess of ``sys.executable`` with this process's environment
(``PYTHONPATH`` included, plus the folder this process imported ``streamcore``
from), so it exercises the same build whether streamcore is installed or built
in place. Quick mode checks every workload's result against its baseline's
(checksums) and exits non-zero when one differs; missed targets do not fail it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import streamcore

TIMEOUT = 300
PLOTS = ("throughput.png", "batch_size.png", "latency.png")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    package_root = str(Path(streamcore.__file__).resolve().parent.parent)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if package_root not in paths:
        env["PYTHONPATH"] = os.pathsep.join([package_root, *paths])
    env["COLUMNS"] = "140"
    return env


def test_bench_quick_checks_every_workload(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the plots need matplotlib (the test extra has it)")
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "streamcore", "bench", "--quick", "--out", str(out)],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    explain = f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, explain

    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["quick"] is True
    workloads = results["workloads"]
    ran = {name: res for name, res in workloads.items() if "skipped" not in res}
    # The suite's own workloads are always there; others are skipped only when their module is.
    for name in ("partition", "overhead", "clickstream", "failures", "latency", "memory"):
        assert name in ran, f"{name} did not run\n{explain}"
    for name, res in ran.items():
        assert "error" not in res, f"{name}: {res.get('error')}\n{explain}"
        assert res.get("checksum_ok") is not None, (
            f"{name} gives no checksum: its run() must pass checksum= and baseline_checksum= "
            "to streamcore.benches.common.result"
        )
        assert res["checksum_ok"] is True, (
            f"{name}: checksum {res['checksum']} vs baseline {res['baseline_checksum']}"
        )
        assert res["throughput"] > 0 and res["baseline"] > 0, name
        assert res["targets"], name
    assert set(results["meta"]["plots"]) == set(PLOTS)
    for name in PLOTS:
        png = out / name
        assert png.is_file() and png.stat().st_size > 1000, name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert "streamcore benchmarks" in proc.stdout


def _runner(monkeypatch: pytest.MonkeyPatch, checksum: dict, baseline: dict) -> object:
    """The runner module, with one fake workload ``fake`` returning these checksums."""
    import importlib
    import importlib.machinery
    import types

    from streamcore.cli import _find_benches

    _find_benches()
    runner = importlib.import_module("streamcore.benches.runner")
    common = importlib.import_module("streamcore.benches.common")
    fake = types.ModuleType("streamcore.benches._fake_workload")
    fake.__spec__ = importlib.machinery.ModuleSpec(fake.__name__, None)

    def run(quick: bool) -> dict:
        return common.result(
            "fake",
            description="a fake workload",
            unit="rec/s",
            throughput=2.0,
            baseline=1.0,
            baseline_description="nothing",
            targets=[common.target("ratio", 2.0, ">=", 10.0, "x")],
            figures={"n": 1},
            params={"quick": quick},
            checksum=checksum,
            baseline_checksum=baseline,
        )

    fake.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    monkeypatch.setattr(
        runner, "WORKLOADS", {"fake": fake.__name__, "missing": "streamcore.benches._no_such"}
    )
    monkeypatch.setattr(runner, "_plots", lambda *args: [])
    return runner


def test_quick_run_fails_on_a_checksum_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = _runner(monkeypatch, {"records": 10, "sum": 1.5}, {"records": 10, "sum": 1.25})
    assert runner.main(["--quick", "--out", str(tmp_path)]) == 1  # type: ignore[attr-defined]
    results = json.loads((tmp_path / "results.json").read_text())["workloads"]
    assert results["fake"]["checksum_ok"] is False
    assert "skipped" in results["missing"]
    # Without --quick a mismatch is reported, not fatal; a missed target fails only with --strict.
    assert runner.main(["--out", str(tmp_path)]) == 0  # type: ignore[attr-defined]


def test_quick_run_passes_on_equal_checksums_and_missed_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = _runner(monkeypatch, {"records": 10, "sum": 0.1 + 0.2}, {"records": 10, "sum": 0.3})
    assert runner.main(["--quick", "--out", str(tmp_path)]) == 0  # type: ignore[attr-defined]
    results = json.loads((tmp_path / "results.json").read_text())["workloads"]
    assert results["fake"]["checksum_ok"] is True
    assert results["fake"]["passed"] is False
    assert runner.main(["--quick", "--strict", "--out", str(tmp_path)]) == 1  # type: ignore[attr-defined]
