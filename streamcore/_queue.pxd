cimport cython
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t


# Message states. Every state from DELETED on is final: the message never
# comes back, and its slot may be reclaimed.
cdef enum MessageState:
    DELAYED = 1     # sent with a delay that has not passed yet
    VISIBLE = 2     # may be received
    IN_FLIGHT = 3   # received; invisible until its visibility deadline
    DELETED = 4
    DEAD = 5        # moved to the dead-letter queue (redrive)
    EXPIRED = 6     # dropped by retention


cdef struct Run:
    # Consecutive message indices start .. start + count - 1.
    int64_t start
    int64_t count


cdef struct Timer:
    # At ``due`` the messages of the run that still carry ``token`` (set by the
    # receive or the delayed send that armed this timer) become visible.
    double due
    int64_t start
    int64_t count
    uint64_t token


@cython.final
cdef class QueueCore:
    # Per message, indexed by ``index - base`` (indices below ``base`` are
    # final and their slots were reclaimed).
    cdef uint8_t* state
    cdef int64_t* rcount
    cdef uint64_t* token
    cdef int64_t* sent_ms
    cdef uint32_t* nbytes          # payload bytes, for max_bytes per receive
    cdef int32_t* group            # FIFO only
    cdef int64_t* next_in_group    # FIFO only: the group's next message, -1 at its end
    cdef readonly int64_t base
    cdef readonly int64_t end      # index the next sent message gets
    cdef int64_t cap
    cdef int64_t low               # every message below it is final
    cdef int64_t expire_from       # first message retention has not dropped yet
    cdef int64_t last_sent_ms

    # One chunk per send: its first index and how many of its messages are not final.
    cdef int64_t* chunk_first
    cdef int64_t* chunk_alive
    cdef int64_t chunk_lo
    cdef int64_t n_chunks
    cdef int64_t chunk_cap
    cdef int64_t* dead_chunks
    cdef int64_t n_dead_chunks
    cdef int64_t dead_chunks_cap

    # Standard queues: visible messages in the order they became visible.
    cdef Run* ring
    cdef int64_t ring_head
    cdef int64_t ring_len
    cdef int64_t ring_cap

    # Timers: a FIFO for deadlines that arrive in order (the usual case: one
    # visibility timeout) and a binary heap for the rest.
    cdef Timer* tfifo
    cdef int64_t tfifo_head
    cdef int64_t tfifo_len
    cdef int64_t tfifo_cap
    cdef Timer* heap
    cdef int64_t heap_len
    cdef int64_t heap_cap
    cdef uint64_t next_token

    # FIFO queues: per group its first not-final message, its last message,
    # messages in flight and whether it sits in the ``avail`` ring of groups
    # that may deliver (nothing in flight, first message visible).
    cdef int64_t* g_head
    cdef int64_t* g_tail
    cdef int32_t* g_inflight
    cdef uint8_t* g_queued
    cdef uint8_t* g_free
    cdef int32_t n_groups
    cdef int32_t g_cap
    cdef int32_t* avail
    cdef int64_t avail_head
    cdef int64_t avail_len
    cdef int64_t avail_cap
    cdef int32_t* freed
    cdef int64_t n_freed
    cdef int64_t freed_cap

    cdef readonly bint fifo
    cdef readonly int64_t retention_ms
    cdef readonly int64_t n_visible
    cdef readonly int64_t n_in_flight
    cdef readonly int64_t n_delayed
    cdef readonly bytes prefix_bytes

    # Scratch for receive: redriven messages.
    cdef int64_t* redriven
    cdef int64_t n_redriven
    cdef int64_t redriven_cap
    cdef int64_t* scratch
    cdef int64_t scratch_cap

    cdef int _reserve(self, int64_t n) except -1 nogil
    cdef int _reserve_groups(self, int32_t n) except -1 nogil
    cdef int _add_chunk(self, int64_t first, int64_t count) except -1 nogil
    cdef int64_t _chunk_of(self, int64_t index) noexcept nogil
    cdef int _push_run(self, int64_t start, int64_t count) except -1 nogil
    cdef int _push_timer(self, double due, int64_t start, int64_t count, uint64_t token) except -1 nogil
    cdef void _heap_pop(self) noexcept nogil
    cdef bint _timer_live(self, Timer* t) noexcept nogil
    cdef int _fire(self, Timer* t) except -1 nogil
    cdef int _advance(self, double now) except -1 nogil
    cdef int _expire(self, double now) except -1 nogil
    cdef int _finalize(self, int64_t index, uint8_t final) except -1 nogil
    cdef int _maybe_avail(self, int32_t g) except -1 nogil
    cdef int _push_avail(self, int32_t g) except -1 nogil
    cdef int _push_redriven(self, int64_t index) except -1 nogil
    cdef int _receive_one(self, int64_t index, uint64_t tok) noexcept nogil
    cdef int64_t _receive_standard(self, int64_t* out, int64_t max_n, int64_t max_rc,
                                   int64_t max_bytes, uint64_t tok) except -1 nogil
    cdef int64_t _receive_fifo(self, int64_t* out, int64_t max_n, int64_t max_rc,
                               int64_t max_bytes, uint64_t tok) except -1 nogil
    cdef bint _fifo_receivable(self) noexcept nogil
    cdef void _compact(self) noexcept nogil
    cdef int _receipt(self, int64_t first, int64_t n, object indices, object counts, int64_t rc,
                      const int64_t** idx, const int64_t** rcs) except -1
