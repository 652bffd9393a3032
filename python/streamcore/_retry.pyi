"""Stubs for the native module ``streamcore._retry`` (the failure policy)."""

from typing import Literal

VERDICTS: dict[int, str]
CONDITIONS: dict[int, str]

def failure_verdict(
    n: int, bisect: bool, retries_used: int, max_retries: int
) -> Literal["retry", "split", "discard"]:
    """What follows a failed attempt of ``n`` records."""

def partial_verdict(retries_used: int, max_retries: int) -> Literal["retry", "discard"]:
    """What follows a partial batch response."""

def retry_delay(
    retry: int,
    initial: float = 0.5,
    multiplier: float = 1.5,
    cap: float = 60.0,
    jitter: float = 0.5,
) -> float:
    """Back-off in seconds before retry number ``retry`` (1-based)."""
