"""Consumer options: defaults, allowed ranges and validation (API.md, SEMANTICS 1).

Every bad value fails at ``app.consumer(...)`` with a ``ConfigError`` (a
``ValueError``) that names the option, the value and the allowed range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from streamcore.errors import ConfigError

STARTING_POSITIONS = ("TRIM_HORIZON", "LATEST", "AT_TIMESTAMP", "AT_SEQUENCE")
DEFAULT_MAX_BATCH_BYTES = 6 * 2**20
DEFAULT_RETRY_BACKOFF = (0.5, 1.5, 60.0)
DEFAULT_MAX_STATE_BYTES = 2**20


@dataclass(frozen=True, slots=True)
class StreamOptions:
    """Validated options of a stream consumer (see ``App.consumer`` for their meaning)."""

    batch_size: int = 100
    batch_window: float = 0.0
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    parallelization: int = 1
    starting_position: str = "TRIM_HORIZON"
    starting_timestamp: float | None = None
    starting_sequence: dict[int, int] = field(default_factory=dict)
    bisect_on_error: bool = False
    max_retries: int = -1
    max_record_age: float = -1
    on_failure: Any = None
    report_failures: bool = False
    tumbling_window: float | None = None
    timeout: float | None = None
    retry_backoff: tuple[float, float, float] = DEFAULT_RETRY_BACKOFF
    max_state_bytes: int = DEFAULT_MAX_STATE_BYTES


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _int_in(name: str, value: object, low: int, high: int) -> int:
    if not _is_int(value) or not low <= value <= high:  # type: ignore[operator]
        raise ConfigError(name, value, f"an integer in {low}..{high}")
    return int(value)  # type: ignore[call-overload, no-any-return]


def _number_in(name: str, value: object, low: float, high: float) -> float:
    if not _is_number(value) or not low <= float(value) <= high:  # type: ignore[arg-type]
        raise ConfigError(name, value, f"seconds in {low:g}..{high:g}")
    return float(value)  # type: ignore[arg-type]


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(name, value, "True or False")
    return value


def _epoch_seconds(value: object) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ConfigError("starting_timestamp", value, "an aware datetime or epoch seconds")
        return value.timestamp()
    if _is_number(value):
        return float(value)  # type: ignore[arg-type]
    raise ConfigError("starting_timestamp", value, "an aware datetime or epoch seconds")


def stream_options(
    *,
    batch_size: int | None = None,
    batch_window: float = 0.0,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    parallelization: int = 1,
    starting_position: str = "TRIM_HORIZON",
    starting_timestamp: datetime | float | None = None,
    starting_sequence: dict[int, int] | None = None,
    bisect_on_error: bool = False,
    max_retries: int = -1,
    max_record_age: float = -1,
    on_failure: Any = None,
    report_failures: bool = False,
    tumbling_window: float | None = None,
    timeout: float | None = None,
    retry_backoff: tuple[float, float, float] = DEFAULT_RETRY_BACKOFF,
    max_state_bytes: int = DEFAULT_MAX_STATE_BYTES,
) -> StreamOptions:
    """Validate stream-consumer options; raises ``ConfigError`` naming the first bad one."""
    size = 100 if batch_size is None else _int_in("batch_size", batch_size, 1, 10_000)
    window = _number_in("batch_window", batch_window, 0, 300)
    if not _is_int(max_batch_bytes) or max_batch_bytes < 1:
        raise ConfigError("max_batch_bytes", max_batch_bytes, "an integer >= 1")
    lanes = _int_in("parallelization", parallelization, 1, 10)
    if starting_position not in STARTING_POSITIONS:
        raise ConfigError("starting_position", starting_position, " | ".join(STARTING_POSITIONS))
    start_ts: float | None = None
    if starting_position == "AT_TIMESTAMP":
        if starting_timestamp is None:
            raise ConfigError("starting_timestamp", None, "a datetime or epoch seconds for AT_TIMESTAMP")
        start_ts = _epoch_seconds(starting_timestamp)
    elif starting_timestamp is not None:
        raise ConfigError("starting_timestamp", starting_timestamp, "None unless AT_TIMESTAMP")
    start_seq: dict[int, int] = {}
    if starting_position == "AT_SEQUENCE":
        if not isinstance(starting_sequence, dict) or not starting_sequence:
            raise ConfigError(
                "starting_sequence", starting_sequence, "a {shard_id: seq} dict for AT_SEQUENCE"
            )
        for shard, seq in starting_sequence.items():
            if not _is_int(shard) or not _is_int(seq) or seq < 0:
                raise ConfigError("starting_sequence", starting_sequence, "{shard_id: seq >= 0}")
        start_seq = dict(starting_sequence)
    elif starting_sequence is not None:
        raise ConfigError("starting_sequence", starting_sequence, "None unless AT_SEQUENCE")
    retries = -1 if max_retries == -1 else _int_in("max_retries", max_retries, -1, 10_000)
    if max_record_age == -1:
        age = -1.0
    elif _is_number(max_record_age) and 60 <= float(max_record_age) <= 604_800:
        age = float(max_record_age)
    else:
        raise ConfigError("max_record_age", max_record_age, "-1 or seconds in 60..604800")
    if tumbling_window is not None:
        tumbling_window = _number_in("tumbling_window", tumbling_window, 1, 900)
    if timeout is not None and (not _is_number(timeout) or timeout <= 0):
        raise ConfigError("timeout", timeout, "None or seconds > 0")
    destination = callable(on_failure) or hasattr(on_failure, "put") or hasattr(on_failure, "send")
    if on_failure is not None and not destination:
        raise ConfigError("on_failure", on_failure, "None, a callable, a MemoryStream or a MemoryQueue")
    if (
        not isinstance(retry_backoff, tuple)
        or len(retry_backoff) != 3
        or not all(_is_number(v) for v in retry_backoff)
        or retry_backoff[0] < 0
        or retry_backoff[1] < 1
        or retry_backoff[2] < retry_backoff[0]
    ):
        raise ConfigError(
            "retry_backoff", retry_backoff, "(initial >= 0, multiplier >= 1, cap >= initial) seconds"
        )
    if not _is_int(max_state_bytes) or max_state_bytes < 1:
        raise ConfigError("max_state_bytes", max_state_bytes, "an integer >= 1")
    return StreamOptions(
        max_state_bytes=int(max_state_bytes),
        batch_size=size,
        batch_window=window,
        max_batch_bytes=int(max_batch_bytes),
        parallelization=lanes,
        starting_position=starting_position,
        starting_timestamp=start_ts,
        starting_sequence=start_seq,
        bisect_on_error=_bool("bisect_on_error", bisect_on_error),
        max_retries=retries,
        max_record_age=age,
        on_failure=on_failure,
        report_failures=_bool("report_failures", report_failures),
        tumbling_window=tumbling_window,
        timeout=None if timeout is None else float(timeout),
        retry_backoff=(float(retry_backoff[0]), float(retry_backoff[1]), float(retry_backoff[2])),
    )


def backoff_delay(attempt: int, backoff: tuple[float, float, float], jitter: float) -> float:
    """Delay before retry number ``attempt`` (1-based), with ``jitter`` in [0, 1) spreading it ±50%."""
    initial, multiplier, cap = backoff
    base = min(cap, initial * multiplier ** (attempt - 1))
    return min(cap, base * (0.5 + jitter))
