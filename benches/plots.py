"""PNG plots of a benchmark run (matplotlib, Agg backend: no display needed).

- ``throughput.png``: per workload, streamcore against its baseline(s), one
  panel each (units differ between workloads); a workload may give several
  bars in ``series["bars"]``.
- ``batch_size.png``: throughput against batch size, from every workload with
  ``series["batch_size"]`` (``{batch size: records/s}``; ``series["batch_size_label"]``
  says what was timed).
- ``latency.png``: latency percentiles, streamcore against the baseline, from
  ``series["latency"]`` (``{side: {"p50": ms, ...}}``).

``make_plots`` raises ImportError when matplotlib is missing (the runner
reports it and goes on).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

STREAMCORE = "#1f6feb"
OTHERS = ("#8b949e", "#d29922", "#a371f7", "#3fb950", "#f85149", "#db61a2")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ran(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in results.items() if "error" not in res and "skipped" not in res}


def _bars(res: dict[str, Any]) -> dict[str, float]:
    bars = res.get("series", {}).get("bars")
    if bars:
        return {str(k): float(v) for k, v in bars.items()}
    return {"streamcore": float(res["throughput"]), "baseline": float(res["baseline"])}


def _compact(value: float) -> str:
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{prefix}"
    return f"{value:.3g}"


def _throughput(results: dict[str, dict[str, Any]], path: Path, title: str) -> Path | None:
    ran = _ran(results)
    if not ran:
        return None
    plt = _pyplot()
    cols = min(3, len(ran))
    rows = math.ceil(len(ran) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax, (name, res) in zip(axes.flat, ran.items(), strict=False):
        bars = _bars(res)
        labels = list(bars)
        colors = [STREAMCORE if i == 0 else OTHERS[(i - 1) % len(OTHERS)] for i in range(len(labels))]
        drawn = ax.bar(range(len(labels)), list(bars.values()), color=colors)
        ax.bar_label(drawn, labels=[_compact(v) for v in bars.values()], fontsize=7)
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
        better = "lower is better" if res.get("lower_is_better") else "higher is better"
        ax.set_ylabel(f"{res['unit']} ({better})", fontsize=8)
        ok = {True: "checksum equal", False: "CHECKSUM DIFFERS", None: "no checksum"}[res.get("checksum_ok")]
        ax.set_title(f"{name}: {res['ratio']:.2f}x baseline, {ok}", fontsize=9)
        values = list(bars.values())
        if min(values) > 0 and max(values) / min(values) > 50:
            ax.set_yscale("log")
        ax.margins(y=0.15)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(ran) :]:
        ax.axis("off")
    fig.suptitle(title)
    # Fixed margins (tight_layout draws the figure once more: seconds on a busy machine).
    height = 3.6 * rows
    fig.subplots_adjust(
        left=0.07, right=0.98, top=1 - 0.75 / height, bottom=0.9 / height, hspace=0.75, wspace=0.3
    )
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _batch_size(results: dict[str, dict[str, Any]], path: Path, title: str) -> Path | None:
    curves = {
        name: res["series"]["batch_size"]
        for name, res in _ran(results).items()
        if res.get("series", {}).get("batch_size")
    }
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (name, curve) in enumerate(curves.items()):
        sizes = sorted(curve, key=int)
        res = results[name]
        what = res["series"].get("batch_size_label", "")
        ax.plot(
            [int(s) for s in sizes],
            [curve[s] for s in sizes],
            marker="o",
            color=STREAMCORE if i == 0 else OTHERS[(i - 1) % len(OTHERS)],
            label=f"{name}{': ' + what if what else ''} ({res['unit']})",
        )
        for size in sizes:
            ax.annotate(
                _compact(curve[size]),
                (int(size), curve[size]),
                fontsize=7,
                textcoords="offset points",
                xytext=(0, 5),
                ha="center",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks([int(s) for c in curves.values() for s in c], [str(s) for c in curves.values() for s in c])
    ax.set_xlabel("batch_size")
    ax.set_ylabel("throughput per second (log)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.subplots_adjust(left=0.11, right=0.97, top=0.9, bottom=0.13)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _latency(results: dict[str, dict[str, Any]], path: Path, title: str) -> Path | None:
    sides: dict[str, dict[str, float]] = {}
    for res in _ran(results).values():
        sides.update(res.get("series", {}).get("latency", {}))
    if not sides:
        return None
    plt = _pyplot()
    names = list(next(iter(sides.values())))
    width = 0.8 / len(sides)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (side, values) in enumerate(sides.items()):
        xs = [j + (i - (len(sides) - 1) / 2) * width for j in range(len(names))]
        color = STREAMCORE if i == 0 else OTHERS[(i - 1) % len(OTHERS)]
        bars = ax.bar(xs, [values[n] for n in names], width, label=side, color=color)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("ms from put to handler start")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.subplots_adjust(left=0.11, right=0.97, top=0.9, bottom=0.13)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def make_plots(results: dict[str, dict[str, Any]], out: Path, *, quick: bool = False) -> list[Path]:
    """Write the plots that ``results`` has data for into ``out``; returns their paths."""
    _pyplot()  # ImportError first, before anything is written
    out.mkdir(parents=True, exist_ok=True)
    note = " (--quick)" if quick else ""
    made = [
        _throughput(results, out / "throughput.png", f"streamcore against baselines{note}"),
        _batch_size(results, out / "batch_size.png", f"throughput against batch size{note}"),
        _latency(results, out / "latency.png", f"latency percentiles{note}"),
    ]
    return [p for p in made if p is not None]
