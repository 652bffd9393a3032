"""``python -m streamcore bench``: run the workloads, compare with baselines and targets.

Every workload module has ``run(quick: bool) -> dict`` (shape in
``streamcore.benches.common.result``). The runner prints one table row per
workload (throughput, baseline throughput, ratio, each target with pass or
fail), a table of every figure measured, and writes ``results.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
from rich.console import Console
from rich.table import Table

WORKLOADS: dict[str, str] = {
    "partition": "streamcore.benches.partition",
    "overhead": "streamcore.benches.overhead",
}


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m streamcore bench",
        description="Run streamcore's benchmark workloads against their baselines and targets.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: a smoke run, not a measurement"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        choices=list(WORKLOADS),
        help=f"run only these workloads (of: {', '.join(WORKLOADS)})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results"),
        help="directory for results.json (default ./bench-results)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 when a target is missed"
    )
    return parser.parse_args(argv)


def _rate(value: float, unit: str) -> str:
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{prefix} {unit}"
    return f"{value:.1f} {unit}"


def _number(value: float | int) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 1e5:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def _measure(value: float, unit: str) -> str:
    if unit.endswith("/s"):
        return _rate(value, unit)
    return f"{_number(value)} {unit}".strip()


def _meta(quick: bool) -> dict[str, Any]:
    from streamcore import __version__

    return {
        "streamcore": __version__,
        "python": sys.version.split()[0],
        "pyarrow": pa.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "quick": quick,
        "started_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _summary_table(results: dict[str, dict[str, Any]], quick: bool) -> Table:
    title = "streamcore benchmarks" + (" (--quick: small sizes, indicative only)" if quick else "")
    table = Table(title=title)
    table.add_column("workload", style="bold")
    table.add_column("throughput", justify="right")
    table.add_column("baseline", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("target")
    table.add_column("measured", justify="right")
    table.add_column("result")
    for name, res in results.items():
        if "error" in res:
            table.add_row(name, "-", "-", "-", "-", res["error"], "[red]ERROR[/red]")
            continue
        unit = res["unit"]
        first = [name, _rate(res["throughput"], unit), _rate(res["baseline"], unit)]
        first.append(f"{res['ratio']:.1f}x")
        for i, t in enumerate(res["targets"]):
            row = first if i == 0 else ["", "", "", ""]
            table.add_row(
                *row,
                f"{t['what']} {t['op']} {_measure(t['limit'], t['unit'])}",
                _measure(t["value"], t["unit"]),
                "[green]pass[/green]" if t["passed"] else "[red]FAIL[/red]",
                end_section=i == len(res["targets"]) - 1,
            )
    return table


def _figures_table(results: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="figures")
    table.add_column("workload", style="bold")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, res in results.items():
        if "error" in res:
            continue
        for i, (key, value) in enumerate(res["figures"].items()):
            table.add_row(name if i == 0 else "", key, _number(value))
        table.add_section()
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected workloads; returns the process exit code."""
    args = _parse(argv)
    console = Console()
    if not console.is_terminal:  # a log or a pipe: room for the tables without wrapping
        console = Console(width=120)
    names = list(dict.fromkeys(args.only)) if args.only else list(WORKLOADS)
    results: dict[str, dict[str, Any]] = {}
    meta = _meta(args.quick)
    started = time.perf_counter()
    for name in names:
        with console.status(f"running {name}{' (quick)' if args.quick else ''} ..."):
            workload_started = time.perf_counter()
            try:
                module = importlib.import_module(WORKLOADS[name])
                res = module.run(args.quick)
            except Exception as exc:
                console.print(f"[red]{name} failed:[/red]\n{traceback.format_exc()}")
                res = {"name": name, "error": f"{type(exc).__name__}: {exc}"}
            res["seconds"] = time.perf_counter() - workload_started
        results[name] = res
        console.print(f"{name}: done in {res['seconds']:.1f} s")
    meta["seconds"] = time.perf_counter() - started

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    path.write_text(json.dumps({"meta": meta, "workloads": results}, indent=2) + "\n")

    console.print(_summary_table(results, args.quick))
    console.print(_figures_table(results))
    for name, res in results.items():
        if "error" not in res:
            console.print(f"[bold]{name}[/bold]: {res['description']}")
            console.print(f"  baseline: {res['baseline_description']}")
    console.print(f"wrote {path}")

    if any("error" in res for res in results.values()):
        return 1
    if args.strict and not all(res["passed"] for res in results.values()):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
