"""Helpers shared by the workloads: timing, test data, and the shape of a result."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from streamcore.demo import zipf_user_ids

SEED = 20240601
SHARDS = 8


def best_seconds(fn: Callable[[], object], repeat: int = 3) -> float:
    """The fastest of ``repeat`` wall-clock timings of ``fn()`` (a full collection before each)."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def user_keys(n: int, seed: int = SEED) -> pa.Array:
    """``n`` utf8 keys ``"user-00042"``, Zipf-skewed over 100,000 users, as the demo makes them."""
    return zipf_user_ids(n, seed=seed)


def target(what: str, value: float, op: str, limit: float, unit: str = "") -> dict[str, Any]:
    """One target: ``value op limit`` (``op`` is ``">="`` or ``"<="``) and whether it holds."""
    if op == ">=":
        passed = value >= limit
    elif op == "<=":
        passed = value <= limit
    else:
        raise ValueError(f"op={op!r} is invalid: expected '>=' or '<='")
    return {"what": what, "value": value, "op": op, "limit": limit, "unit": unit, "passed": passed}


def result(
    name: str,
    *,
    description: str,
    unit: str,
    throughput: float,
    baseline: float,
    baseline_description: str,
    targets: list[dict[str, Any]],
    figures: dict[str, float | int],
    params: dict[str, Any],
) -> dict[str, Any]:
    """What every workload's ``run`` returns (and what ``results.json`` stores per workload).

    ``throughput`` and ``baseline`` are in ``unit`` (higher is better), ``ratio``
    is throughput / baseline, ``figures`` every number measured, ``params`` the
    sizes and settings used.
    """
    return {
        "name": name,
        "description": description,
        "unit": unit,
        "throughput": throughput,
        "baseline": baseline,
        "baseline_description": baseline_description,
        "ratio": throughput / baseline if baseline else float("inf"),
        "targets": targets,
        "passed": all(t["passed"] for t in targets),
        "figures": figures,
        "params": params,
    }
