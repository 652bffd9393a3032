"""Helpers shared by the workloads: timing, test data, checksums and the shape of a result."""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa

from streamcore.demo import zipf_user_ids

SEED = 20240601
SHARDS = 8

Checksum = Mapping[str, int | float]


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


def checksums_equal(a: Checksum | None, b: Checksum | None, rel: float = 1e-9) -> bool:
    """Whether two checksums agree: same names, ints equal, floats within ``rel`` (relative).

    Floats get a tolerance because two sides may add the same values in
    another order (a sum of 2M values differs in its last bits).
    """
    if a is None or b is None or set(a) != set(b):
        return False
    for name, x in a.items():
        y = b[name]
        if isinstance(x, float) or isinstance(y, float):
            if not math.isclose(float(x), float(y), rel_tol=rel, abs_tol=rel):
                return False
        elif x != y:
            return False
    return True


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
    checksum: Checksum | None = None,
    baseline_checksum: Checksum | None = None,
    lower_is_better: bool = False,
    series: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What every workload's ``run`` returns (and what ``results.json`` stores per workload).

    ``throughput`` and ``baseline`` are in ``unit``, ``ratio`` is how many
    times better streamcore is: throughput / baseline (or baseline /
    throughput with ``lower_is_better``, for latencies and bytes). ``figures``
    holds every number measured, ``params`` the sizes and settings used.

    ``checksum`` and ``baseline_checksum`` (small dicts of ints and floats,
    e.g. records counted and the sum of a value) say that both sides computed
    the same thing: ``checksum_ok`` is whether they agree (``checksums_equal``),
    None when the workload gives none. ``python -m streamcore bench --quick``
    fails on a disagreement. ``series`` carries data for the plots (see
    ``streamcore.benches.plots``).
    """
    if lower_is_better:
        ratio = baseline / throughput if throughput else float("inf")
    else:
        ratio = throughput / baseline if baseline else float("inf")
    checksum_ok = None
    if checksum is not None or baseline_checksum is not None:
        checksum_ok = checksums_equal(checksum, baseline_checksum)
    return {
        "name": name,
        "description": description,
        "unit": unit,
        "throughput": throughput,
        "baseline": baseline,
        "baseline_description": baseline_description,
        "ratio": ratio,
        "lower_is_better": lower_is_better,
        "targets": targets,
        "passed": all(t["passed"] for t in targets),
        "checksum": dict(checksum) if checksum is not None else None,
        "baseline_checksum": dict(baseline_checksum) if baseline_checksum is not None else None,
        "checksum_ok": checksum_ok,
        "figures": figures,
        "params": params,
        "series": series or {},
    }
