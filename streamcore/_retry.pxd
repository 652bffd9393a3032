from libc.stdint cimport int64_t


# What happens to a lane's head batch after a failed attempt (SEMANTICS 0.1, 0.2, 2.4-2.6).
cdef enum Verdict:
    RETRY = 0       # same records again, after back-off; one retry consumed
    SPLIT = 1       # bisect: two halves, left first, no back-off, no retry consumed
    DISCARD = 2     # retries exhausted: the records go to on_failure


# Why records are discarded; the codes travel to Python with a discard action.
cdef enum Condition:
    NONE = 0
    RETRY_ATTEMPTS_EXHAUSTED = 1
    RECORD_AGE_EXCEEDED = 2


cdef inline Verdict after_failure(Py_ssize_t n, bint bisect, int64_t retries_used,
                                  int64_t max_retries) noexcept nogil:
    # Model M1: a failed batch of n > 1 records splits when bisect is on; a split
    # costs no retry. Otherwise the failure costs one retry, and past max_retries
    # (-1: never) the records are discarded.
    if bisect and n > 1:
        return SPLIT
    if max_retries >= 0 and retries_used + 1 > max_retries:
        return DISCARD
    return RETRY


cdef inline Verdict after_partial(int64_t retries_used, int64_t max_retries) noexcept nogil:
    # A partial batch response: the failed tail is retried and that costs a retry,
    # with bisect on or off (SEMANTICS 0.2).
    if max_retries >= 0 and retries_used + 1 > max_retries:
        return DISCARD
    return RETRY


cdef inline double backoff_delay(int64_t retry, double initial, double multiplier, double cap,
                                 double jitter) noexcept nogil:
    # Delay before retry number ``retry`` (1-based): initial * multiplier**(retry-1),
    # capped, then spread by jitter in [0, 1) to 50%..150%, capped again.
    cdef double delay = initial
    cdef int64_t i
    for i in range(1, retry):
        delay *= multiplier
        if delay >= cap:
            delay = cap
            break
    delay *= 0.5 + jitter
    return cap if delay > cap else delay


cdef inline bint is_expired(int64_t arrival_ms, int64_t max_age_ms, double now) noexcept nogil:
    # A record is too old once its age is strictly greater than max_record_age.
    return max_age_ms >= 0 and <double>(arrival_ms + max_age_ms) < now * 1000.0
