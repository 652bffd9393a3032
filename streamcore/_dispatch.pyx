"""Ordered per-shard batch dispatch: lanes, batch assembly and the shard checkpoint.

One ``ShardDispatcher`` serves one (consumer, shard). Records read from the
shard log are spread over ``n_lanes`` lanes by ``hash % n_lanes`` (SEMANTICS
0.3), so records of one key always share a lane. Each lane keeps a FIFO of
its not-yet-done records and at most one batch in flight, which is always the
head of that FIFO; a batch leaves the FIFO only when it is done. Hence the
shard checkpoint -- the highest seq S with every record <= S done -- is just
one below the oldest record still in any FIFO (or below the read position).

The dispatcher decides *which* records form the next batch and *when*; the
Python layer turns that into Arrow slices and invokes the handler. Every
per-record step here runs without the GIL.

With one lane (the common case) the lane holds runs instead of entries: one
per chunk read, pointing at the chunk's sizes in place, so reading costs
O(chunks); sizes are summed only for the records a batch takes.
"""

from cpython.ref cimport Py_INCREF, Py_XDECREF, PyObject
from libc.stdint cimport INT64_MAX, INT64_MIN, int64_t, uint32_t, uint64_t, uint8_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memmove

import pyarrow as pa

from streamcore._arrow cimport buffer_address
from streamcore._retry cimport (
    DISCARD,
    NONE,
    RETRY_ATTEMPTS_EXHAUSTED,
    RECORD_AGE_EXCEEDED,
    SPLIT,
    Verdict,
    after_failure,
    after_partial,
    backoff_delay,
    is_expired,
)

# What ``poll`` hands out: an invocation, or records to deliver to on_failure.
INVOKE = NONE
DISCARD_RETRIES_EXHAUSTED = RETRY_ATTEMPTS_EXHAUSTED
DISCARD_RECORD_AGE = RECORD_AGE_EXCEEDED
FINAL = 3  # the closing invocation of a tumbling window: no records

cdef int64_t NO_WINDOW = -(2 ** 62)
cdef int _FINAL = 3
VERDICT_NAMES = ("retry", "split", "discard")

cdef double _INF = float("inf")
# Ingests of fewer records keep the GIL: releasing it for a few microseconds of work
# under the App's lock lets a handler thread take it for a whole switch interval.
cdef Py_ssize_t _NOGIL_RECORDS = 65536


cdef inline void _note_arrival(Lane* lane, int64_t arrival_ms, uint32_t nbytes) noexcept nogil:
    # Keep the bounds that let _fresh_count skip its pass over the records.
    if arrival_ms < lane.last_arrival_ms:
        lane.arrivals_sorted = False
    lane.last_arrival_ms = arrival_ms
    if nbytes > lane.max_nbytes:
        lane.max_nbytes = nbytes


cdef inline uint64_t _head_seq(const Lane* lane) noexcept nogil:
    return lane.runs[lane.rhead].seq if lane.use_runs else lane.buf[lane.head].seq


cdef inline int64_t _head_arrival(const Lane* lane) noexcept nogil:
    return lane.runs[lane.rhead].arrival_ms if lane.use_runs else lane.buf[lane.head].arrival_ms


cdef inline void _record_at(const Lane* lane, Py_ssize_t i, uint64_t* seq, int64_t* arrival_ms) noexcept nogil:
    # Seq and arrival of the lane's i-th pending record (0: the oldest); i < tail - head.
    cdef const Run* run
    if not lane.use_runs:
        seq[0] = lane.buf[lane.head + i].seq
        arrival_ms[0] = lane.buf[lane.head + i].arrival_ms
        return
    run = lane.runs + lane.rhead
    while i >= run.n:
        i -= run.n
        run += 1
    seq[0] = run.seq + <uint64_t>i
    arrival_ms[0] = run.arrival_ms


cdef inline uint32_t _or_sizes(const uint32_t* sz, Py_ssize_t n) noexcept nogil:
    # At least the largest size, in about half the instructions of a sum (vectorised).
    cdef uint32_t bits = 0
    cdef Py_ssize_t i
    for i in range(n):
        bits |= sz[i]
    return bits


cdef inline int64_t _sum_sizes(const uint32_t* sz, Py_ssize_t n) noexcept nogil:
    # A plain loop: the compiler vectorises it.
    cdef uint64_t total = 0
    cdef Py_ssize_t i
    for i in range(n):
        total += sz[i]
    return <int64_t>total


cdef class ShardDispatcher:
    """Batch assembly for one consumer on one shard.

    Parameters
    ----------
    n_lanes : int
        Lanes of the shard (``parallelization``); lane = key hash % n_lanes.
    batch_size : int
        Most records per batch.
    max_batch_bytes : int
        Most record bytes per batch; a single larger record goes alone.
    batch_window : float
        Seconds a lane waits for a full batch, counted from the later of the
        end of its previous invocation and the arrival of its oldest pending
        record.
    start_seq : int
        First seq this dispatcher reads.
    bisect : bool
        Split a failed batch of n > 1 records in two (model M1, SEMANTICS 0.1).
    max_retries : int
        Failed retries before a batch is discarded; -1 retries forever.
    max_record_age : float
        Seconds after ``arrival`` at which a record is discarded; -1 never.
    backoff : tuple
        ``(initial, multiplier, cap)`` seconds of the retry back-off.
    tumbling_window : float
        Window length in seconds (0: no windows). Batches never span two
        windows, and a window is closed by a ``FINAL`` action once a later
        record is read or, with the lane idle, once its end passed on the clock.

    Not thread-safe: the caller serialises every call (the App holds its lock).
    """

    def __cinit__(self, *args, **kwargs):
        self.lanes = NULL  # so __dealloc__ is safe whatever __init__ does
        self.n_lanes = 0

    def __init__(self, Py_ssize_t n_lanes, Py_ssize_t batch_size, int64_t max_batch_bytes,
                  double batch_window, uint64_t start_seq, bint bisect=False,
                  int64_t max_retries=-1, double max_record_age=-1, tuple backoff=(0.5, 1.5, 60.0),
                  double tumbling_window=0):
        if n_lanes < 1 or batch_size < 1 or max_batch_bytes < 1 or batch_window < 0:
            raise ValueError("n_lanes, batch_size and max_batch_bytes must be >= 1, batch_window >= 0")
        if self.lanes != NULL:
            raise TypeError("ShardDispatcher is initialised once")
        # Zeroed: if the rest of __init__ raises (a bad ``backoff``), __dealloc__ finds
        # no runs to let go of and NULL buffers to free, not uninitialised memory.
        self.lanes = <Lane*>calloc(n_lanes, sizeof(Lane))
        if self.lanes == NULL:
            raise MemoryError()
        self.n_lanes = n_lanes
        self.batch_size = batch_size
        self.max_batch_bytes = max_batch_bytes
        self.batch_window = batch_window
        self.next_read = start_seq
        self.in_flight = 0
        self.at_end = False
        self.rr = 0
        self.bisect = bisect
        self.max_retries = max_retries
        self.max_age_ms = -1 if max_record_age < 0 else <int64_t>(max_record_age * 1000)
        self.backoff_initial, self.backoff_multiplier, self.backoff_cap = backoff
        self.window_ms = <int64_t>(tumbling_window * 1000)
        cdef Py_ssize_t i
        for i in range(n_lanes):
            self.lanes[i].use_runs = n_lanes == 1
            self.lanes[i].runs = NULL
            self.lanes[i].rhead = 0
            self.lanes[i].rtail = 0
            self.lanes[i].rcap = 0
            self.lanes[i].buf = NULL
            self.lanes[i].head = 0
            self.lanes[i].tail = 0
            self.lanes[i].cap = 0
            self.lanes[i].in_flight = False
            self.lanes[i].inflight_n = 0
            self.lanes[i].pending_since = 0.0
            self.lanes[i].idle_since = -_INF
            self.lanes[i].pinned = NULL
            self.lanes[i].n_pinned = 0
            self.lanes[i].pinned_cap = 0
            self.lanes[i].attempt = 1
            self.lanes[i].retries = 0
            self.lanes[i].retry_at = -_INF
            self.lanes[i].hold_until = -_INF
            self.lanes[i].doomed = 0
            self.lanes[i].doomed_attempts = 0
            self.lanes[i].done_seq = -1
            self.lanes[i].skip_through = -1
            self.lanes[i].inflight_kind = NONE
            self.lanes[i].open_window = NO_WINDOW
            self.lanes[i].max_nbytes = 0
            self.lanes[i].arrivals_sorted = True
            self.lanes[i].last_arrival_ms = INT64_MIN
            self.lanes[i].final_pending = False
            self.lanes[i].final_early = False

    def __dealloc__(self):
        cdef Py_ssize_t i, r
        if self.lanes != NULL:
            for i in range(self.n_lanes):
                for r in range(self.lanes[i].rhead, self.lanes[i].rtail):
                    Py_XDECREF(self.lanes[i].runs[r].owner)
                free(self.lanes[i].runs)
                free(self.lanes[i].buf)
                free(self.lanes[i].pinned)
            free(self.lanes)

    # -- reading ---------------------------------------------------------------

    cdef int _reserve(self, Lane* lane, Py_ssize_t extra) except -1 nogil:
        # Room for ``extra`` more entries at the tail: the live ones move to the front
        # of a buffer with slack beyond them (3x their number, at most 64k entries), so
        # a read-ahead window sliding along moves each entry a third of a time, not at
        # every refill; the buffer grows only when that room is not there.
        cdef Py_ssize_t live = lane.tail - lane.head
        cdef Py_ssize_t need = live + extra
        cdef Py_ssize_t want = need + (3 * need if need < (1 << 14) else (1 << 16))
        cdef Entry* grown
        if lane.tail + extra <= lane.cap:
            return 0
        if want < 256:
            want = 256
        if lane.cap < want:
            grown = <Entry*>realloc(lane.buf, want * sizeof(Entry))
            if grown == NULL:
                with gil:
                    raise MemoryError()
            lane.buf = grown
            lane.cap = want
        if lane.head:
            memmove(lane.buf, lane.buf + lane.head, live * sizeof(Entry))
            lane.head = 0
            lane.tail = live
        return 0

    cdef int _ingest_rows(self, uint64_t first_seq, const uint64_t* h, const uint32_t* sz,
                          int64_t arrival_ms, Py_ssize_t start, Py_ssize_t n, double now) except -1 nogil:
        cdef Py_ssize_t i, k, n_lanes = self.n_lanes
        cdef Lane* lane
        cdef Entry* entry
        cdef uint64_t seq
        cdef Py_ssize_t* need
        # Count first, so that each lane grows at most once per chunk.
        need = <Py_ssize_t*>calloc(n_lanes, sizeof(Py_ssize_t))
        if need == NULL:
            with gil:
                raise MemoryError()
        for i in range(start, n):
            need[h[i] % <uint64_t>n_lanes] += 1
        try:
            for k in range(n_lanes):
                if need[k]:
                    self._reserve(&self.lanes[k], need[k])
        finally:
            free(need)
        for i in range(start, n):
            lane = &self.lanes[h[i] % <uint64_t>n_lanes]
            seq = first_seq + <uint64_t>i
            if <int64_t>seq <= lane.skip_through:
                lane.done_seq = <int64_t>seq
                continue  # done by an earlier run of this consumer
            if lane.head == lane.tail:
                lane.pending_since = now
            entry = &lane.buf[lane.tail]
            entry.seq = seq
            entry.arrival_ms = arrival_ms
            entry.nbytes = sz[i]
            lane.tail += 1
            _note_arrival(lane, arrival_ms, sz[i])
        return 0

    cdef int _ingest_run(self, uint64_t first_seq, object sizes, int64_t arrival_ms,
                         Py_ssize_t start, Py_ssize_t n, double now) except -1:
        # One lane: the records join as one run, or lengthen the last run when they
        # continue it in the same chunk. Those done by an earlier run of this consumer
        # form a prefix (seqs ascend) and are skipped.
        cdef Lane* lane = &self.lanes[0]
        cdef Py_ssize_t skip, live, want
        cdef Run* run
        cdef Run* grown
        cdef int64_t first = <int64_t>(first_seq + <uint64_t>start)
        if lane.skip_through >= first:
            skip = lane.skip_through - first + 1
            if skip > n - start:
                skip = n - start
            lane.done_seq = first + skip - 1
            start += skip
        if start >= n:
            return 0
        if lane.head == lane.tail:
            lane.pending_since = now
        if lane.rtail > lane.rhead:
            run = &lane.runs[lane.rtail - 1]
            if (run.owner == <PyObject*>sizes and run.base_seq == first_seq and run.arrival_ms == arrival_ms
                    and run.seq + <uint64_t>run.n == first_seq + <uint64_t>start):
                run.n += n - start
                lane.tail += n - start
                return 0
        size_buf = sizes.buffers()[1]
        cdef const uint32_t* sz = (<const uint32_t*>buffer_address(size_buf)) + <Py_ssize_t>sizes.offset
        if lane.rtail == lane.rcap:
            live = lane.rtail - lane.rhead
            if lane.rhead and lane.rhead >= live:  # at least half the room is free in front
                memmove(lane.runs, lane.runs + lane.rhead, live * sizeof(Run))
            else:
                want = 2 * lane.rcap if lane.rcap else 8
                grown = <Run*>realloc(lane.runs, want * sizeof(Run))
                if grown == NULL:
                    raise MemoryError()
                lane.runs = grown
                lane.rcap = want
                if lane.rhead:
                    memmove(lane.runs, lane.runs + lane.rhead, live * sizeof(Run))
            lane.rhead = 0
            lane.rtail = live
        run = &lane.runs[lane.rtail]
        run.seq = first_seq + <uint64_t>start
        run.n = n - start
        run.arrival_ms = arrival_ms
        run.sz = sz + start
        run.base_seq = first_seq
        Py_INCREF(sizes)  # the run reads the sizes in place: they must outlive it
        run.owner = <PyObject*>sizes
        lane.rtail += 1
        lane.tail += n - start
        return 0

    def ingest(self, uint64_t first_seq, hashes, sizes, int64_t arrival_ms, Py_ssize_t start,
               double now, Py_ssize_t stop=-1):
        """Read records ``first_seq + start .. first_seq + stop - 1`` of one log chunk
        into the lanes (``stop`` -1: to the chunk's end).

        ``hashes`` (uint64: the key hashes, which pick the lanes; None with one
        lane) and ``sizes`` (uint32) describe the chunk's records; the chunk's
        records all arrived at ``arrival_ms``. Records must be read in seq order
        without gaps: ``first_seq + start`` must be ``next_read``. With one lane
        the dispatcher keeps a reference to ``sizes`` and reads it in place until
        those records are done (an Arrow array never changes).
        """
        cdef Py_ssize_t n = len(sizes)
        if 0 <= stop < n:
            n = stop
        if first_seq + start != self.next_read:
            raise ValueError(f"ingest at seq {first_seq + start}, expected {self.next_read}")
        if start >= n:
            return
        if self.n_lanes == 1:
            self._ingest_run(first_seq, sizes, arrival_ms, start, n, now)
            self.next_read = first_seq + <uint64_t>n
            return
        if hashes is None or len(hashes) < n:
            raise ValueError("ingest needs a key hash per record with more than one lane")
        cdef const uint64_t* h = (<const uint64_t*>buffer_address(hashes.buffers()[1])) + <Py_ssize_t>hashes.offset
        size_buf = sizes.buffers()[1]
        cdef const uint32_t* sz = (<const uint32_t*>buffer_address(size_buf)) + <Py_ssize_t>sizes.offset
        if n - start >= _NOGIL_RECORDS:
            with nogil:
                self._ingest_rows(first_seq, h, sz, arrival_ms, start, n, now)
        else:
            self._ingest_rows(first_seq, h, sz, arrival_ms, start, n, now)
        self.next_read = first_seq + <uint64_t>n

    def drop_before(self, uint64_t seq):
        """Forget records below ``seq`` that the log no longer holds (retention).

        They are lost, as on Kinesis when records expire unread; lanes with a
        batch in flight are left alone. Returns how many records were dropped.
        """
        cdef Py_ssize_t i, k, r, dropped = 0
        cdef Lane* lane
        if seq > self.next_read:
            self.next_read = seq
        for i in range(self.n_lanes):
            lane = &self.lanes[i]
            if lane.in_flight:
                continue
            k = 0
            if lane.use_runs:
                r = lane.rhead
                while r < lane.rtail and lane.runs[r].seq + <uint64_t>lane.runs[r].n <= seq:
                    k += lane.runs[r].n
                    r += 1
                if r < lane.rtail and lane.runs[r].seq < seq:
                    k += <Py_ssize_t>(seq - lane.runs[r].seq)
            else:
                while lane.head + k < lane.tail and lane.buf[lane.head + k].seq < seq:
                    k += 1
            if not k:
                continue
            dropped += k
            self._pop(lane, k)
            while k and lane.n_pinned:
                if lane.pinned[0] > k:
                    lane.pinned[0] -= k
                    k = 0
                else:
                    k -= lane.pinned[0]
                    self._drop_pinned_front(lane)
                    self._reset_head(lane)
        return dropped

    def restore_lanes(self, lane_done):
        """After a restart with the same lane count: skip each lane's records up to
        ``lane_done[lane]`` (its last done seq), which an earlier run finished past
        the shard checkpoint."""
        if len(lane_done) != self.n_lanes:
            raise ValueError(f"{len(lane_done)} lane positions for {self.n_lanes} lanes")
        cdef Py_ssize_t i
        for i in range(self.n_lanes):
            self.lanes[i].skip_through = lane_done[i]
            self.lanes[i].done_seq = lane_done[i]

    def lane_progress(self):
        """Each lane's last done seq (-1: none), for the checkpoint store."""
        return [self.lanes[i].done_seq for i in range(self.n_lanes)]

    def skip_to(self, uint64_t seq):
        """Move the read position forward to ``seq`` without reading (starting positions)."""
        if seq > self.next_read:
            self.next_read = seq

    # -- batch assembly --------------------------------------------------------

    cdef int64_t _window_of(self, int64_t arrival_ms) noexcept nogil:
        # floor(arrival / size), also for times before the epoch
        cdef int64_t q = arrival_ms // self.window_ms
        if q * self.window_ms > arrival_ms:
            q -= 1
        return q

    cdef Py_ssize_t _fresh_count(self, Lane* lane, bint* full) noexcept nogil:
        # Greedy cut: the next record joins while the batch is below batch_size and
        # stays within max_batch_bytes (an oversize first record goes alone) and,
        # with tumbling windows, belongs to the head record's window (which is the
        # open window, if any: a record of another window closes that first). This
        # runs on every poll, so it avoids a pass over the records when it can: a
        # window's end is found by binary search when arrivals are sorted, and the
        # byte limit is not checked record by record when no batch can reach it.
        cdef Py_ssize_t i, lo, hi
        cdef Py_ssize_t avail = lane.tail - lane.head
        cdef Py_ssize_t stop = lane.head + (avail if avail < self.batch_size else self.batch_size)
        cdef int64_t nbytes = 0
        cdef int64_t limit = self.max_batch_bytes
        cdef int64_t window_start = INT64_MIN
        cdef int64_t window_end = INT64_MAX
        cdef const Entry* entry
        if lane.use_runs:
            return self._fresh_count_runs(lane, full)
        if self.window_ms:
            window_start = self._window_of(lane.buf[lane.head].arrival_ms) * self.window_ms
            window_end = window_start + self.window_ms
            if lane.arrivals_sorted:
                if lane.buf[stop - 1].arrival_ms >= window_end:
                    lo = lane.head
                    hi = stop - 1
                    while lo < hi:  # the first record at or past the end
                        i = lo + (hi - lo) // 2
                        if lane.buf[i].arrival_ms >= window_end:
                            hi = i
                        else:
                            lo = i + 1
                    stop = lo
                window_start = INT64_MIN
                window_end = INT64_MAX
        if (window_end != INT64_MAX or window_start != INT64_MIN
                or <int64_t>lane.max_nbytes * (stop - lane.head) > limit):
            for i in range(lane.head, stop):
                entry = &lane.buf[i]
                if (entry.arrival_ms >= window_end or entry.arrival_ms < window_start
                        or (i > lane.head and nbytes + entry.nbytes > limit)):
                    stop = i
                    break
                nbytes += entry.nbytes
        full[0] = stop < lane.tail or stop - lane.head == self.batch_size
        return stop - lane.head

    cdef Py_ssize_t _fresh_count_runs(self, Lane* lane, bint* full) noexcept nogil:
        # _fresh_count over runs: the same greedy cut, a run (one arrival) at a time.
        # Bytes: a run's sizes OR-ed bound its largest, so OR x count bounds its bytes;
        # while the bounds fit max_batch_bytes nothing is summed. Otherwise the sizes
        # are summed, a run's part at once, and only the run where the limit falls
        # is walked record by record.
        cdef Py_ssize_t avail = lane.tail - lane.head
        cdef Py_ssize_t want = avail if avail < self.batch_size else self.batch_size
        cdef Py_ssize_t take = 0, cap, m, j
        cdef int64_t nbytes = 0, part
        cdef int64_t limit = self.max_batch_bytes
        cdef int64_t window_start = INT64_MIN
        cdef int64_t window_end = INT64_MAX
        cdef uint32_t bits
        cdef bint exact = False
        cdef const Run* run = lane.runs + lane.rhead
        if self.window_ms:
            window_start = self._window_of(run.arrival_ms) * self.window_ms
            window_end = window_start + self.window_ms
        while take < want:
            if run.arrival_ms >= window_end or run.arrival_ms < window_start:
                break
            m = run.n if run.n < want - take else want - take
            if not exact:
                bits = _or_sizes(run.sz, m)
                if m <= 0x7FFFFFFF:  # then bits * m < 2^63, and adding nbytes fits uint64
                    exact = <uint64_t>bits * <uint64_t>m + <uint64_t>nbytes > <uint64_t>limit
                else:
                    exact = bits != 0 and m > (limit - nbytes) // bits
                if not exact:
                    nbytes += <int64_t>bits * m
            take += m
            run += 1
        if exact:
            cap = take
            take = 0
            nbytes = 0
            run = lane.runs + lane.rhead
            while take < cap:
                m = run.n if run.n < cap - take else cap - take
                part = _sum_sizes(run.sz, m)
                if nbytes + part <= limit:
                    nbytes += part
                    take += m
                    run += 1
                    continue
                for j in range(m):  # the limit falls in this run (an oversize first record goes alone)
                    if take and nbytes + run.sz[j] > limit:
                        break
                    nbytes += run.sz[j]
                    take += 1
                break
        full[0] = take < avail or take == self.batch_size
        return take

    cdef Py_ssize_t _expired_prefix(self, Lane* lane, Py_ssize_t limit, double now) noexcept nogil:
        # Arrival never decreases along a lane, so the records too old form a prefix.
        cdef Py_ssize_t count = 0
        cdef const Run* run
        if lane.use_runs:
            run = lane.runs + lane.rhead
            while count < limit and is_expired(run.arrival_ms, self.max_age_ms, now):
                count += run.n if run.n < limit - count else limit - count
                run += 1
            return count
        while count < limit and is_expired(lane.buf[lane.head + count].arrival_ms, self.max_age_ms, now):
            count += 1
        return count

    cdef double _ready_at(self, Lane* lane, double now, Py_ssize_t* count, int* kind) noexcept nogil:
        # When the lane's next action may start, what it is (``kind``) and how many
        # records it covers. Discards come first: doomed records, then records
        # already too old; then the pinned retry or a fresh batch.
        cdef bint full = False
        cdef double opened, at, expires
        cdef Py_ssize_t limit
        count[0] = 0
        kind[0] = NONE
        if lane.in_flight:
            return _INF
        if lane.hold_until > now and (lane.head != lane.tail or lane.final_pending):
            count[0] = 1
            return lane.hold_until
        if lane.final_pending:
            count[0] = 1
            kind[0] = _FINAL
            return lane.retry_at
        if lane.head == lane.tail:
            if lane.open_window != NO_WINDOW:
                # An idle lane closes its window once the window's end passed on the clock,
                # or at once at the end of a closed shard (SEMANTICS 0.6).
                count[0] = 1
                kind[0] = _FINAL
                if self.at_end:
                    return -_INF
                return <double>((lane.open_window + 1) * self.window_ms) / 1000.0
            return _INF
        if (lane.open_window != NO_WINDOW and not lane.n_pinned
                and self._window_of(_head_arrival(lane)) != lane.open_window):
            # A record of another window was read: close the open one first. Later, as a
            # rule; earlier only if the stream's clock stepped back (SEMANTICS 0.4: each
            # record counts in the window of its own arrival time).
            count[0] = 1
            kind[0] = _FINAL
            return -_INF
        if lane.doomed:
            count[0] = lane.pinned[0]
            kind[0] = lane.doomed
            return -_INF
        if self.max_age_ms >= 0:
            limit = lane.pinned[0] if lane.n_pinned else self.batch_size
            if limit > lane.tail - lane.head:
                limit = lane.tail - lane.head
            count[0] = self._expired_prefix(lane, limit, now)
            if count[0]:
                kind[0] = RECORD_AGE_EXCEEDED
                return -_INF
            expires = <double>(_head_arrival(lane) + self.max_age_ms + 1) / 1000.0
        else:
            expires = _INF
        if lane.n_pinned:
            count[0] = lane.pinned[0]
            at = lane.retry_at
        else:
            count[0] = self._fresh_count(lane, &full)
            if full or self.batch_window == 0:
                return -_INF
            opened = lane.pending_since if lane.pending_since > lane.idle_since else lane.idle_since
            at = opened + self.batch_window
        return expires if expires < at else at

    cdef Py_ssize_t _start_next(self, double now, Py_ssize_t* count, int* kind, int64_t* attempt) noexcept nogil:
        # Start the next ready action (see ``poll``): its lane, or -1 when none is ready.
        cdef Py_ssize_t k, idx
        cdef Lane* lane
        for k in range(self.n_lanes):
            idx = (self.rr + k) % self.n_lanes
            lane = &self.lanes[idx]
            if self._ready_at(lane, now, count, kind) <= now and count[0]:
                lane.in_flight = True
                lane.inflight_kind = kind[0]
                if kind[0] == _FINAL:
                    count[0] = 0
                elif kind[0] == NONE and self.window_ms and lane.open_window == NO_WINDOW:
                    lane.open_window = self._window_of(_head_arrival(lane))
                lane.inflight_n = count[0]
                self.in_flight += 1
                self.rr = (idx + 1) % self.n_lanes
                if kind[0] == RETRY_ATTEMPTS_EXHAUSTED:
                    attempt[0] = lane.doomed_attempts
                elif kind[0] == RECORD_AGE_EXCEEDED:
                    attempt[0] = lane.attempt - 1 if lane.attempt > 1 else 1
                else:
                    attempt[0] = lane.attempt
                return idx
        return -1

    def poll(self, double now):
        """Start the next ready action: ``(lane, count, attempt, kind)``, or None.

        ``kind`` is ``INVOKE`` (run the handler on the first ``count`` records of
        the lane) or a discard condition (deliver them to on_failure; ``attempt``
        is then the invocation count to report). The action stays in flight
        until ``complete``, ``fail``, ``partial``, ``discarded`` or ``release``.
        Lanes are visited round-robin.
        """
        cdef Py_ssize_t count
        cdef int kind
        cdef int64_t attempt
        cdef Py_ssize_t idx = self._start_next(now, &count, &kind, &attempt)
        if idx < 0:
            return None
        return (idx, count, attempt, kind)

    def poll_batch(self, double now):
        """``poll``, and what the caller asks next about the action, in one call (one per batch):
        ``(lane, count, attempt, kind, first_seq, last_seq, contiguous, last_arrival, window,
        early)``, or None.

        The batch's bounds and last arrival are those of ``batch_info`` (``-1, -1, True, 0``
        for a closing, which has no records); ``window`` is the lane's open window for an
        invocation or a closing with tumbling windows (None otherwise, and for a discard);
        ``early`` is ``closing_early`` for a closing (False otherwise).
        """
        cdef Py_ssize_t count
        cdef int kind
        cdef int64_t attempt
        cdef Py_ssize_t idx = self._start_next(now, &count, &kind, &attempt)
        if idx < 0:
            return None
        cdef Lane* lane = &self.lanes[idx]
        window = None
        if (kind == NONE or kind == _FINAL) and lane.open_window != NO_WINDOW:
            window = lane.open_window
        if kind == _FINAL:
            return (idx, count, attempt, kind, -1, -1, True, 0, window, bool(lane.final_early))
        cdef uint64_t first = _head_seq(lane), last
        cdef int64_t last_arrival
        _record_at(lane, count - 1, &last, &last_arrival)
        return (idx, count, attempt, kind, first, last,
                last - first == <uint64_t>(count - 1), last_arrival, window, False)

    def next_deadline(self, double now):
        """``(due, upcoming)``: the earliest ready time of any lane's next action, and the
        earliest that is still after ``now`` (inf when there is none)."""
        cdef double due = _INF, upcoming = _INF, at
        cdef Py_ssize_t i, count
        cdef int kind
        for i in range(self.n_lanes):
            at = self._ready_at(&self.lanes[i], now, &count, &kind)
            if not count:
                continue
            if at < due:
                due = at
            if now < at < upcoming:
                upcoming = at
        return (due, upcoming)

    def batch_bounds(self, Py_ssize_t lane_idx):
        """``(first_seq, last_seq, contiguous)`` of the lane's batch in flight."""
        cdef Lane* lane = self._lane(lane_idx)
        if not lane.in_flight:
            raise ValueError(f"lane {lane_idx} has no batch in flight")
        cdef uint64_t first = _head_seq(lane), last
        cdef int64_t last_arrival
        _record_at(lane, lane.inflight_n - 1, &last, &last_arrival)
        return (first, last, last - first == <uint64_t>(lane.inflight_n - 1))

    def batch_offsets(self, Py_ssize_t lane_idx, uint64_t base):
        """The in-flight batch's seqs minus ``base``, as a uint64 array (for ``take``)."""
        cdef Lane* lane = self._lane(lane_idx)
        cdef Py_ssize_t i, j, n = lane.inflight_n
        out_buf = pa.allocate_buffer(8 * n)
        cdef uint64_t* out = <uint64_t*>buffer_address(out_buf)
        cdef Entry* src
        cdef const Run* run
        if lane.use_runs:
            run = lane.runs + lane.rhead
            i = 0
            while i < n:
                for j in range(run.n if run.n < n - i else n - i):
                    out[i] = run.seq + <uint64_t>j - base
                    i += 1
                run += 1
        else:
            src = &lane.buf[lane.head]
            for i in range(n):  # at most a batch: too short to be worth releasing the GIL
                out[i] = src[i].seq - base
        return pa.Array.from_buffers(pa.uint64(), n, [None, out_buf])

    def batch_arrivals(self, Py_ssize_t lane_idx):
        """``(first, last)`` arrival in epoch ms of the lane's batch in flight."""
        cdef Lane* lane = self._lane(lane_idx)
        if not lane.in_flight:
            raise ValueError(f"lane {lane_idx} has no batch in flight")
        cdef uint64_t last
        cdef int64_t last_arrival
        _record_at(lane, lane.inflight_n - 1, &last, &last_arrival)
        return (_head_arrival(lane), last_arrival)

    # -- outcomes --------------------------------------------------------------

    cdef void _pop(self, Lane* lane, Py_ssize_t count) noexcept:
        # The oldest ``count`` records are done and leave the lane (runs: the GIL is
        # held, as a run's last record going lets go of its chunk's sizes).
        cdef Py_ssize_t left = count
        cdef Run* run
        cdef PyObject* owner
        if not count:
            return
        if lane.use_runs:
            while True:
                run = &lane.runs[lane.rhead]
                if run.n > left:
                    lane.done_seq = <int64_t>(run.seq + <uint64_t>left) - 1
                    run.seq += <uint64_t>left
                    run.n -= left
                    run.sz += left
                    break
                left -= run.n
                lane.done_seq = <int64_t>(run.seq + <uint64_t>run.n) - 1
                owner = run.owner
                lane.rhead += 1
                Py_XDECREF(owner)
                if not left:
                    break
            if lane.rhead == lane.rtail:
                lane.rhead = 0
                lane.rtail = 0
        else:
            lane.done_seq = <int64_t>lane.buf[lane.head + count - 1].seq
        lane.head += count
        if lane.head == lane.tail:
            lane.head = 0
            lane.tail = 0

    cdef int _pin_front(self, Lane* lane, Py_ssize_t count) except -1:
        cdef Py_ssize_t* grown
        if lane.n_pinned == lane.pinned_cap:
            lane.pinned_cap = lane.pinned_cap * 2 if lane.pinned_cap else 8
            grown = <Py_ssize_t*>realloc(lane.pinned, lane.pinned_cap * sizeof(Py_ssize_t))
            if grown == NULL:
                raise MemoryError()
            lane.pinned = grown
        memmove(lane.pinned + 1, lane.pinned, lane.n_pinned * sizeof(Py_ssize_t))
        lane.pinned[0] = count
        lane.n_pinned += 1
        return 0

    cdef Lane* _lane(self, Py_ssize_t lane_idx) except NULL:
        if lane_idx < 0 or lane_idx >= self.n_lanes:
            raise IndexError(f"lane {lane_idx} out of range 0..{self.n_lanes - 1}")
        return &self.lanes[lane_idx]

    cdef Lane* _inflight_lane(self, Py_ssize_t lane_idx) except NULL:
        cdef Lane* lane = self._lane(lane_idx)
        if not lane.in_flight:
            raise ValueError(f"lane {lane_idx} has no batch in flight")
        lane.in_flight = False
        self.in_flight -= 1
        return lane

    cdef void _reset_head(self, Lane* lane) noexcept nogil:
        lane.attempt = 1
        lane.retries = 0
        lane.retry_at = -_INF
        lane.doomed = 0
        lane.doomed_attempts = 0

    cdef void _drop_pinned_front(self, Lane* lane) noexcept nogil:
        lane.n_pinned -= 1
        memmove(lane.pinned, lane.pinned + 1, lane.n_pinned * sizeof(Py_ssize_t))

    def complete(self, Py_ssize_t lane_idx, double now):
        """The lane's action in flight succeeded: its records leave the FIFO
        (a closing invocation closes the window instead)."""
        cdef Lane* lane = self._inflight_lane(lane_idx)
        if lane.inflight_kind == _FINAL:
            if not lane.final_early:
                lane.open_window = NO_WINDOW
            lane.final_pending = False
            lane.final_early = False
            self._reset_head(lane)
            lane.idle_since = now
            return
        self._pop(lane, lane.inflight_n)
        if lane.n_pinned:
            self._drop_pinned_front(lane)
        self._reset_head(lane)
        lane.idle_since = now

    def fail(self, Py_ssize_t lane_idx, double now, double jitter):
        """The lane's invocation failed as a whole; returns "retry", "split" or "discard".

        Retry: the same records again after back-off (a retry is consumed).
        Split: two halves, left first, at once (bisect; no retry consumed).
        Discard: retries are exhausted; ``poll`` hands the records out for on_failure.
        """
        cdef Lane* lane = self._inflight_lane(lane_idx)
        cdef Py_ssize_t n = lane.inflight_n, left
        if lane.inflight_kind == _FINAL:
            # A closing invocation has no records to discard: it blocks the lane
            # and is retried (with back-off) until it succeeds (SEMANTICS 0.4).
            self._schedule_retry(lane, now, jitter)
            lane.idle_since = now
            return "retry"
        if not lane.n_pinned:
            self._pin_front(lane, n)
        cdef Verdict verdict = after_failure(n, self.bisect, lane.retries, self.max_retries)
        if verdict == SPLIT:
            left = (n + 1) // 2
            lane.pinned[0] = n - left
            self._pin_front(lane, left)
            self._reset_head(lane)
        elif verdict == DISCARD:
            lane.doomed = RETRY_ATTEMPTS_EXHAUSTED
            lane.doomed_attempts = lane.attempt
        else:
            self._schedule_retry(lane, now, jitter)
        lane.idle_since = now
        return VERDICT_NAMES[verdict]

    def partial(self, Py_ssize_t lane_idx, Py_ssize_t done, double now, double jitter):
        """A partial batch response: the first ``done`` records succeeded, the tail failed.

        The tail is retried (a retry is consumed) or, past ``max_retries``,
        discarded. Returns "retry" or "discard".
        """
        cdef Lane* lane = self._inflight_lane(lane_idx)
        cdef Py_ssize_t n = lane.inflight_n
        if done < 0 or done >= n:
            raise ValueError(f"done={done} is invalid: expected 0..{n - 1}")
        self._pop(lane, done)
        if lane.n_pinned:
            lane.pinned[0] = n - done
        else:
            self._pin_front(lane, n - done)
        cdef Verdict verdict = after_partial(lane.retries, self.max_retries)
        if verdict == DISCARD:
            lane.doomed = RETRY_ATTEMPTS_EXHAUSTED
            lane.doomed_attempts = lane.attempt
        else:
            self._schedule_retry(lane, now, jitter)
        lane.idle_since = now
        return VERDICT_NAMES[verdict]

    cdef void _schedule_retry(self, Lane* lane, double now, double jitter) noexcept:
        lane.retries += 1
        lane.attempt += 1
        lane.retry_at = now + backoff_delay(lane.retries, self.backoff_initial,
                                            self.backoff_multiplier, self.backoff_cap, jitter)

    def discarded(self, Py_ssize_t lane_idx, double now):
        """The records of the discard in flight reached on_failure: they are done."""
        cdef Lane* lane = self._inflight_lane(lane_idx)
        cdef Py_ssize_t n = lane.inflight_n
        self._pop(lane, n)
        if lane.n_pinned:
            if lane.pinned[0] > n:
                lane.pinned[0] -= n   # too-old head of a pinned batch; the rest stays pinned
            else:
                self._drop_pinned_front(lane)
                self._reset_head(lane)
        lane.idle_since = now

    def defer(self, Py_ssize_t lane_idx, double until):
        """Give the action in flight back and start nothing in this lane before ``until``."""
        cdef Lane* lane = self._inflight_lane(lane_idx)
        lane.hold_until = until

    def release(self, Py_ssize_t lane_idx):
        """Give the action in flight back unchanged (not an attempt): e.g. an abandoned stop."""
        self._inflight_lane(lane_idx)

    def terminate_early(self, Py_ssize_t lane_idx):
        """The window state outgrew its limit: close the window early, then go on in it."""
        cdef Lane* lane = self._lane(lane_idx)
        if lane.open_window == NO_WINDOW:
            raise ValueError(f"lane {lane_idx} has no open window")
        lane.final_pending = True
        lane.final_early = True

    def open_window(self, Py_ssize_t lane_idx):
        """Index (start // size) of the lane's open window, or None."""
        cdef Lane* lane = self._lane(lane_idx)
        return None if lane.open_window == NO_WINDOW else lane.open_window

    def window_of(self, int64_t arrival_ms):
        """Index of the window holding ``arrival_ms``."""
        if not self.window_ms:
            raise ValueError("this dispatcher has no tumbling window")
        return self._window_of(arrival_ms)

    def restore_window(self, Py_ssize_t lane_idx, int64_t window):
        """After a restart: the lane's window ``window`` is still open."""
        self._lane(lane_idx).open_window = window

    def index_of(self, Py_ssize_t lane_idx, uint64_t seq):
        """Position of ``seq`` within the lane's batch in flight, or -1."""
        cdef Lane* lane = self._lane(lane_idx)
        cdef Py_ssize_t lo = 0, hi = lane.inflight_n, mid
        cdef const Run* run
        if not lane.in_flight:
            return -1
        if lane.use_runs:  # seqs ascend along the runs
            run = lane.runs + lane.rhead
            while lo < hi:
                if seq < run.seq:
                    return -1
                if seq < run.seq + <uint64_t>run.n:
                    mid = lo + <Py_ssize_t>(seq - run.seq)
                    return mid if mid < hi else -1
                lo += run.n
                run += 1
            return -1
        while lo < hi:
            mid = (lo + hi) >> 1
            if lane.buf[lane.head + mid].seq < seq:
                lo = mid + 1
            else:
                hi = mid
        if lo < lane.inflight_n and lane.buf[lane.head + lo].seq == seq:
            return lo
        return -1

    # -- progress --------------------------------------------------------------

    def end_of_shard(self):
        """The shard is closed (resharded) and everything of it was read: open windows
        close as soon as their lanes are idle."""
        self.at_end = True

    def finished(self):
        """At the end of a closed shard with nothing left to do: no record pending,
        nothing in flight, no window open."""
        cdef Py_ssize_t i
        if not self.at_end or self.in_flight:
            return False
        for i in range(self.n_lanes):
            if (self.lanes[i].head != self.lanes[i].tail or self.lanes[i].open_window != NO_WINDOW
                    or self.lanes[i].final_pending):
                return False
        return True

    cdef int64_t _checkpoint(self) noexcept nogil:
        cdef uint64_t low = self.next_read
        cdef Py_ssize_t i
        for i in range(self.n_lanes):
            if self.lanes[i].head != self.lanes[i].tail and _head_seq(&self.lanes[i]) < low:
                low = _head_seq(&self.lanes[i])
        return <int64_t>low - 1

    def checkpoint(self):
        """Highest seq S with every record <= S done (-1 when none is)."""
        return self._checkpoint()

    def progress(self):
        """``(checkpoint(), lane_progress())``: what the checkpoint store is given after each batch."""
        return (self._checkpoint(), [self.lanes[i].done_seq for i in range(self.n_lanes)])

    def pending(self):
        """Records read but not done, over all lanes (in flight included)."""
        cdef Py_ssize_t i, total = 0
        for i in range(self.n_lanes):
            total += self.lanes[i].tail - self.lanes[i].head
        return total

    def lane_state(self, Py_ssize_t lane_idx):
        """A dict snapshot of one lane, for debugging and tests."""
        cdef Lane* lane = self._lane(lane_idx)
        return {
            "pending": lane.tail - lane.head,
            "runs": lane.rtail - lane.rhead,  # one lane: pending records are held as runs
            "in_flight": lane.in_flight,
            "inflight_n": lane.inflight_n,
            "pinned": [lane.pinned[i] for i in range(lane.n_pinned)],
            "attempt": lane.attempt,
            "retries": lane.retries,
            "retry_at": lane.retry_at,
            "doomed": lane.doomed,
            "open_window": None if lane.open_window == NO_WINDOW else lane.open_window,
            "final_pending": lane.final_pending,
            "final_early": lane.final_early,
        }
