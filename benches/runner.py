"""``python -m streamcore bench``: run the workloads, compare with baselines and targets.

Every workload module has ``run(quick: bool) -> dict`` (shape in
``streamcore.benches.common.result``). The runner shows a progress bar while
they run, then prints one table row per workload (throughput, baseline, ratio,
whether its result's checksum equals its baseline's, each target with pass or
fail) and a table of every figure measured, and writes ``results.json`` and
PNG plots (``streamcore.benches.plots``; skipped with a note when matplotlib
is not installed) to ``--out``.

A registered workload whose module is not there is skipped, not an error.
Exit status: 1 when a workload raised; with ``--quick`` also when a
workload's checksum differs from its baseline's (a target missed there is
only reported: quick sizes are too small to measure); with ``--strict`` also
when a target is missed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.util
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
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

WORKLOADS: dict[str, str] = {
    "partition": "streamcore.benches.partition",
    "overhead": "streamcore.benches.overhead",
    "aggregate": "streamcore.benches.aggregate",
    "clickstream": "streamcore.benches.clickstream",
    "failures": "streamcore.benches.failures",
    "queues": "streamcore.benches.queues",
    "durable": "streamcore.benches.durable",
    "latency": "streamcore.benches.latency",
    "memory": "streamcore.benches.memory",
}


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m streamcore bench",
        description="Run streamcore's benchmark workloads against their baselines and targets.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes (under a minute): a smoke run that checks results, not a measurement",
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
        help="directory for results.json and the plots (default ./bench-results)",
    )
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when a target is missed")
    return parser.parse_args(argv)


def _rate(value: float, unit: str) -> str:
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{prefix} {unit}"
    return f"{value:.1f} {unit}"


def _number(value: float | int) -> str:
    if isinstance(value, bool):
        return str(value)
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
        "loadavg_start": list(_loadavg()),
    }


def _loadavg() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:  # not on every platform
        return (0.0, 0.0, 0.0)


def _checksum_cell(res: dict[str, Any]) -> str:
    ok = res.get("checksum_ok")
    if ok is None:
        return "[yellow]none[/yellow]"
    return "[green]equal[/green]" if ok else "[red]DIFFERS[/red]"


def _summary_table(results: dict[str, dict[str, Any]], quick: bool) -> Table:
    title = "streamcore benchmarks" + (" (--quick: small sizes, indicative only)" if quick else "")
    table = Table(title=title)
    table.add_column("workload", style="bold")
    table.add_column("streamcore", justify="right")
    table.add_column("baseline", justify="right")
    table.add_column("ratio\n(>1: better)", justify="right")
    table.add_column("checksum")
    table.add_column("target")
    table.add_column("measured", justify="right")
    table.add_column("result")
    for name, res in results.items():
        if "skipped" in res:
            table.add_row(name, "-", "-", "-", "-", "-", res["skipped"], "[yellow]skipped[/yellow]")
            table.add_section()
            continue
        if "error" in res:
            table.add_row(name, "-", "-", "-", "-", "-", res["error"], "[red]ERROR[/red]")
            table.add_section()
            continue
        unit = res["unit"]
        better = "lower" if res.get("lower_is_better") else "higher"
        first = [
            name,
            _measure(res["throughput"], unit),
            _measure(res["baseline"], unit),
            f"{res['ratio']:.2f}x" + ("\n(unit: lower\nis better)" if better == "lower" else ""),
            _checksum_cell(res),
        ]
        targets = res["targets"] or [None]
        for i, t in enumerate(targets):
            row = first if i == 0 else [""] * len(first)
            if t is None:
                table.add_row(*row, "-", "-", "-", end_section=True)
                continue
            table.add_row(
                *row,
                f"{t['what']} {t['op']} {_measure(t['limit'], t['unit'])}",
                _measure(t["value"], t["unit"]),
                "[green]pass[/green]" if t["passed"] else "[red]FAIL[/red]",
                end_section=i == len(targets) - 1,
            )
    return table


def _figures_table(results: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="figures")
    table.add_column("workload", style="bold")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, res in results.items():
        if "error" in res or "skipped" in res:
            continue
        for i, (key, value) in enumerate(res["figures"].items()):
            table.add_row(name if i == 0 else "", key, _number(value))
        table.add_section()
    return table


def _run_one(name: str, quick: bool, console: Console) -> dict[str, Any]:
    """Run one workload; a missing module is skipped, an exception becomes an error entry."""
    module_name = WORKLOADS[name]
    started = time.perf_counter()
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        found = None
    if found is None:
        return {"name": name, "skipped": f"{module_name} is not there", "seconds": 0.0}
    try:
        module = importlib.import_module(module_name)
        res = dict(module.run(quick))
    except Exception as exc:
        console.print(f"[red]{name} failed:[/red]\n{traceback.format_exc()}")
        res = {"name": name, "error": f"{type(exc).__name__}: {exc}"}
    res["seconds"] = time.perf_counter() - started
    return res


def _progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("workloads"),
        TimeElapsedColumn(),
        console=console,
    )


def _plots(results: dict[str, dict[str, Any]], out: Path, quick: bool, console: Console) -> list[str]:
    try:
        plots = importlib.import_module("streamcore.benches.plots")
        return [str(p) for p in plots.make_plots(results, out, quick=quick)]
    except ImportError as exc:
        if getattr(exc, "name", None) == "matplotlib" or "matplotlib" in str(exc):
            console.print(
                "[yellow]note:[/yellow] matplotlib is not installed: no plots "
                "(pip install 'streamcore\\[bench]')"
            )
            return []
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected workloads; returns the process exit code."""
    args = _parse(argv)
    console = Console()
    if not console.is_terminal:  # a log or a pipe: room for the tables without wrapping
        console = Console(width=140)
    names = list(dict.fromkeys(args.only)) if args.only else list(WORKLOADS)
    results: dict[str, dict[str, Any]] = {}
    meta = _meta(args.quick)
    busy = meta["loadavg_start"][0]
    if busy > (os.cpu_count() or 1) * 0.75:
        console.print(
            f"[yellow]note:[/yellow] load average {busy:.1f} on {os.cpu_count()} CPUs: other processes "
            "are running, so the timings below are pessimistic and noisy"
        )
    started = time.perf_counter()
    with _progress(console) as progress:
        task = progress.add_task("starting", total=len(names))
        for name in names:
            progress.update(task, description=f"{name}{' (quick)' if args.quick else ''}")
            res = _run_one(name, args.quick, progress.console)
            results[name] = res
            if "skipped" in res:
                progress.console.print(f"{name}: skipped ({res['skipped']})")
            elif "error" not in res:
                verdict = {True: "checksum equal", False: "[red]CHECKSUM DIFFERS[/red]", None: "no checksum"}
                progress.console.print(
                    f"{name}: done in {res['seconds']:.1f} s, ratio {res['ratio']:.2f}x, "
                    f"{verdict[res.get('checksum_ok')]}"
                )
            progress.advance(task)
        progress.update(task, description="done")
    meta["seconds"] = time.perf_counter() - started
    meta["loadavg_end"] = list(_loadavg())

    args.out.mkdir(parents=True, exist_ok=True)
    plotting = time.perf_counter()
    plots = _plots(results, args.out, args.quick, console)
    meta["plot_seconds"] = time.perf_counter() - plotting
    meta["plots"] = [Path(p).name for p in plots]
    path = args.out / "results.json"
    path.write_text(json.dumps({"meta": meta, "workloads": results}, indent=2, default=str) + "\n")

    console.print(_summary_table(results, args.quick))
    console.print(_figures_table(results))
    for name, res in results.items():
        if "error" not in res and "skipped" not in res:
            console.print(f"[bold]{name}[/bold]: {res['description']}")
            console.print(f"  baseline: {res['baseline_description']}")
    console.print(
        f"workloads {meta['seconds']:.1f} s, plots {meta['plot_seconds']:.1f} s; wrote {path}"
        + "".join(f", {p}" for p in plots)
    )

    status = 0
    if any("error" in res for res in results.values()):
        status = 1
    ran = [(name, res) for name, res in results.items() if "error" not in res and "skipped" not in res]
    differs = [name for name, res in ran if res.get("checksum_ok") is False]
    unchecked = [name for name, res in ran if res.get("checksum_ok") is None]
    if unchecked:
        console.print(f"[yellow]no checksum to verify:[/yellow] {', '.join(unchecked)}")
    if differs:
        console.print(f"[red]checksum differs from the baseline's:[/red] {', '.join(differs)}")
        if args.quick:
            status = 1
    missed = [name for name, res in ran if not res["passed"]]
    if missed:
        note = " (not an error with --quick)" if args.quick else ""
        console.print(f"targets missed: {', '.join(missed)}{note}")
        if args.strict:
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
