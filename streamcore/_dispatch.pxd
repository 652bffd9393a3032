from cpython.ref cimport PyObject
from libc.stdint cimport int64_t, uint32_t, uint64_t


cdef struct Entry:
    # One pending record of a lane: what batch assembly needs without touching Arrow.
    uint64_t seq
    int64_t arrival_ms
    uint32_t nbytes


cdef struct Run:
    # Consecutive records of one log chunk, pending in a one-lane dispatcher: seqs
    # seq .. seq + n - 1, all of one arrival, their sizes read in place from the chunk.
    uint64_t seq
    Py_ssize_t n
    int64_t arrival_ms
    const uint32_t* sz      # size of record ``seq`` (then the next ones)
    PyObject* owner         # the chunk's sizes array: a reference held keeps ``sz`` valid
    uint64_t base_seq       # seq of the owner's element 0


cdef struct Lane:
    # Records not yet done, oldest first. With several lanes, a FIFO of entries:
    # buf[head:tail]. With one lane (``use_runs``), runs[rhead:rtail] hold them and
    # head/tail only count records (tail - head pending), so reading a chunk costs
    # one run, whatever its records.
    bint use_runs
    Entry* buf
    Py_ssize_t head
    Py_ssize_t tail
    Py_ssize_t cap
    Run* runs
    Py_ssize_t rhead
    Py_ssize_t rtail
    Py_ssize_t rcap
    # The batch in flight is always the first ``inflight_n`` records of the FIFO.
    bint in_flight
    Py_ssize_t inflight_n
    double pending_since    # when the FIFO last went from empty to non-empty
    double idle_since       # when the last invocation of this lane finished
    # Failed records are retried as pinned sub-batches taken from the FIFO head,
    # in order (bisect splits one into two); empty = assemble a fresh batch.
    Py_ssize_t* pinned
    Py_ssize_t n_pinned
    Py_ssize_t pinned_cap
    int64_t attempt         # attempt number of the head batch, 1 on the first try
    int64_t retries         # failed retries charged to the head single record / batch
    double retry_at         # the head batch is not retried before this time
    double hold_until       # nothing starts in this lane before this time (failed delivery)
    int doomed              # a Condition: the head batch awaits delivery to on_failure
    int64_t doomed_attempts # invocations of exactly the doomed records
    int64_t done_seq        # highest seq of this lane that is done (-1: none)
    int64_t skip_through    # on restart: this lane's records <= it were done before
    int inflight_kind       # what is in flight: an invocation, a discard or a closing
    # Tumbling windows: the lane's open window (index = start / size), and whether
    # a closing invocation is due; ``final_early``: the state outgrew its limit,
    # so the closing is early and the same window goes on with fresh state.
    int64_t open_window
    bint final_pending
    bint final_early
    # What lets batch assembly of entries skip its per-record scan: the largest record
    # size ever read into the lane, and whether arrivals never decreased along it (then
    # the end of a window is found by binary search). Runs need neither.
    uint32_t max_nbytes
    bint arrivals_sorted
    int64_t last_arrival_ms


cdef class ShardDispatcher:
    cdef Lane* lanes
    cdef readonly Py_ssize_t n_lanes
    cdef readonly Py_ssize_t batch_size
    cdef readonly int64_t max_batch_bytes
    cdef readonly double batch_window
    cdef readonly bint bisect
    cdef readonly int64_t max_retries
    cdef readonly int64_t max_age_ms
    cdef readonly double backoff_initial
    cdef readonly double backoff_multiplier
    cdef readonly double backoff_cap
    cdef readonly int64_t window_ms
    cdef readonly uint64_t next_read
    cdef readonly int64_t in_flight
    cdef readonly bint at_end  # the shard is closed and every record of it was read
    cdef Py_ssize_t rr

    cdef int _reserve(self, Lane* lane, Py_ssize_t extra) except -1 nogil
    cdef int _ingest_rows(self, uint64_t first_seq, const uint64_t* h, const uint32_t* sz,
                          int64_t arrival_ms, Py_ssize_t start, Py_ssize_t n, double now) except -1 nogil
    cdef int _ingest_run(self, uint64_t first_seq, object sizes, int64_t arrival_ms,
                         Py_ssize_t start, Py_ssize_t n, double now) except -1
    cdef Py_ssize_t _fresh_count(self, Lane* lane, bint* full) noexcept nogil
    cdef Py_ssize_t _fresh_count_runs(self, Lane* lane, bint* full) noexcept nogil
    cdef int64_t _window_of(self, int64_t arrival_ms) noexcept nogil
    cdef double _ready_at(self, Lane* lane, double now, Py_ssize_t* count, int* kind) noexcept nogil
    cdef Py_ssize_t _start_next(self, double now, Py_ssize_t* count, int* kind, int64_t* attempt) noexcept nogil
    cdef int64_t _checkpoint(self) noexcept nogil
    cdef Py_ssize_t _expired_prefix(self, Lane* lane, Py_ssize_t limit, double now) noexcept nogil
    cdef void _reset_head(self, Lane* lane) noexcept nogil
    cdef void _drop_pinned_front(self, Lane* lane) noexcept nogil
    cdef void _schedule_retry(self, Lane* lane, double now, double jitter) noexcept
    cdef Lane* _lane(self, Py_ssize_t lane_idx) except NULL
    cdef Lane* _inflight_lane(self, Py_ssize_t lane_idx) except NULL
    cdef int _pin_front(self, Lane* lane, Py_ssize_t count) except -1
    cdef void _pop(self, Lane* lane, Py_ssize_t count) noexcept
