"""The failure policy as pure functions (the dispatcher inlines them from ``_retry.pxd``).

These Python wrappers expose the same decisions to tests and to the reference
model checks, so the policy is stated once, natively.
"""

from libc.stdint cimport int64_t

from streamcore._retry cimport (
    DISCARD,
    RETRY,
    SPLIT,
    Verdict,
    after_failure,
    after_partial,
    backoff_delay,
)

VERDICTS = {RETRY: "retry", SPLIT: "split", DISCARD: "discard"}
CONDITIONS = {1: "RetryAttemptsExhausted", 2: "RecordAgeExceeded"}


def failure_verdict(Py_ssize_t n, bint bisect, int64_t retries_used, int64_t max_retries):
    """What follows a failed attempt of ``n`` records: "retry", "split" or "discard"."""
    cdef Verdict verdict = after_failure(n, bisect, retries_used, max_retries)
    return VERDICTS[verdict]


def partial_verdict(int64_t retries_used, int64_t max_retries):
    """What follows a partial batch response: "retry" (the failed tail) or "discard"."""
    cdef Verdict verdict = after_partial(retries_used, max_retries)
    return VERDICTS[verdict]


def retry_delay(int64_t retry, double initial=0.5, double multiplier=1.5, double cap=60.0,
                double jitter=0.5):
    """Back-off before retry number ``retry`` (1-based); ``jitter`` in [0, 1), 0.5 = none."""
    if retry < 1:
        raise ValueError(f"retry={retry} is invalid: expected >= 1")
    return backoff_delay(retry, initial, multiplier, cap, jitter)
