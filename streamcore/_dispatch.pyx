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
"""

from libc.stdint cimport int64_t, uint32_t, uint64_t, uint8_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memmove

import pyarrow as pa

from streamcore._arrow cimport buffer_address

cdef double _INF = float("inf")


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

    Not thread-safe: the caller serialises every call (the App holds its lock).
    """

    def __cinit__(self, Py_ssize_t n_lanes, Py_ssize_t batch_size, int64_t max_batch_bytes,
                  double batch_window, uint64_t start_seq):
        if n_lanes < 1 or batch_size < 1 or max_batch_bytes < 1 or batch_window < 0:
            raise ValueError("n_lanes, batch_size and max_batch_bytes must be >= 1, batch_window >= 0")
        self.lanes = <Lane*>malloc(n_lanes * sizeof(Lane))
        if self.lanes == NULL:
            raise MemoryError()
        self.n_lanes = n_lanes
        self.batch_size = batch_size
        self.max_batch_bytes = max_batch_bytes
        self.batch_window = batch_window
        self.next_read = start_seq
        self.in_flight = 0
        self.rr = 0
        cdef Py_ssize_t i
        for i in range(n_lanes):
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

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.lanes != NULL:
            for i in range(self.n_lanes):
                free(self.lanes[i].buf)
                free(self.lanes[i].pinned)
            free(self.lanes)

    # -- reading ---------------------------------------------------------------

    cdef int _push(self, Lane* lane, uint64_t seq, int64_t arrival_ms, uint32_t nbytes) except -1 nogil:
        cdef Py_ssize_t live, new_cap
        cdef Entry* grown
        if lane.tail == lane.cap:
            live = lane.tail - lane.head
            if lane.head > 0 and live <= lane.cap // 2:
                # Reuse the space of done records before growing.
                memmove(lane.buf, lane.buf + lane.head, live * sizeof(Entry))
            else:
                new_cap = lane.cap * 2 if lane.cap else 256
                grown = <Entry*>realloc(lane.buf, new_cap * sizeof(Entry))
                if grown == NULL:
                    with gil:
                        raise MemoryError()
                lane.buf = grown
                lane.cap = new_cap
                if lane.head > 0:
                    memmove(lane.buf, lane.buf + lane.head, live * sizeof(Entry))
            lane.head = 0
            lane.tail = live
        lane.buf[lane.tail].seq = seq
        lane.buf[lane.tail].arrival_ms = arrival_ms
        lane.buf[lane.tail].nbytes = nbytes
        lane.tail += 1
        return 0

    def ingest(self, uint64_t first_seq, hashes, sizes, int64_t arrival_ms, Py_ssize_t start,
               double now):
        """Read records ``first_seq + start ..`` of one log chunk into the lanes.

        ``hashes`` (uint64) and ``sizes`` (uint32) describe the chunk's records;
        the chunk's records all arrived at ``arrival_ms``. Records must be read
        in seq order without gaps: ``first_seq + start`` must be ``next_read``.
        """
        cdef Py_ssize_t n = len(hashes)
        if first_seq + start != self.next_read:
            raise ValueError(f"ingest at seq {first_seq + start}, expected {self.next_read}")
        if start >= n:
            return
        hash_buf = hashes.buffers()[1]
        size_buf = sizes.buffers()[1]
        cdef Py_ssize_t hash_off = hashes.offset, size_off = sizes.offset
        cdef const uint64_t* h = (<const uint64_t*>buffer_address(hash_buf)) + hash_off
        cdef const uint32_t* sz = (<const uint32_t*>buffer_address(size_buf)) + size_off
        cdef Py_ssize_t i, n_lanes = self.n_lanes
        cdef Lane* lane
        with nogil:
            for i in range(start, n):
                lane = &self.lanes[0] if n_lanes == 1 else &self.lanes[h[i] % <uint64_t>n_lanes]
                if lane.head == lane.tail:
                    lane.pending_since = now
                self._push(lane, first_seq + <uint64_t>i, arrival_ms, sz[i])
        self.next_read = first_seq + <uint64_t>n

    def skip_to(self, uint64_t seq):
        """Move the read position forward to ``seq`` without reading (starting positions)."""
        if seq > self.next_read:
            self.next_read = seq

    # -- batch assembly --------------------------------------------------------

    cdef Py_ssize_t _fresh_count(self, Lane* lane, bint* full) noexcept nogil:
        # Greedy cut: the next record joins while the batch is below batch_size and
        # stays within max_batch_bytes (an oversize first record goes alone).
        cdef Py_ssize_t i, count = 0
        cdef Py_ssize_t avail = lane.tail - lane.head
        cdef int64_t nbytes = 0
        for i in range(lane.head, lane.tail):
            if count == self.batch_size:
                break
            if count and nbytes + lane.buf[i].nbytes > self.max_batch_bytes:
                break
            nbytes += lane.buf[i].nbytes
            count += 1
        full[0] = count < avail or count == self.batch_size
        return count

    cdef double _ready_at(self, Lane* lane, Py_ssize_t* count) noexcept nogil:
        # When the lane's next batch may start, and how many records it has.
        cdef bint full = False
        cdef double opened
        count[0] = 0
        if lane.in_flight or lane.head == lane.tail:
            return _INF
        if lane.n_pinned:
            count[0] = lane.pinned[0]
            return lane.retry_at
        count[0] = self._fresh_count(lane, &full)
        if full or self.batch_window == 0:
            return -_INF
        opened = lane.pending_since if lane.pending_since > lane.idle_since else lane.idle_since
        return opened + self.batch_window

    def poll(self, double now):
        """Start the next ready batch: ``(lane, count, attempt)``, or None.

        The batch is the first ``count`` records of the lane's FIFO; it stays
        in flight until ``complete`` or ``fail``. Lanes are visited round-robin.
        """
        cdef Py_ssize_t k, idx, count
        cdef Lane* lane
        for k in range(self.n_lanes):
            idx = (self.rr + k) % self.n_lanes
            lane = &self.lanes[idx]
            if self._ready_at(lane, &count) <= now and count:
                lane.in_flight = True
                lane.inflight_n = count
                self.in_flight += 1
                self.rr = (idx + 1) % self.n_lanes
                return (idx, count, lane.attempt)
        return None

    def next_deadline(self):
        """Earliest time at which a batch that is not ready now becomes ready (inf: none)."""
        cdef double best = _INF, at
        cdef Py_ssize_t i, count
        for i in range(self.n_lanes):
            at = self._ready_at(&self.lanes[i], &count)
            if count and at < best:
                best = at
        return best

    def batch_bounds(self, Py_ssize_t lane_idx):
        """``(first_seq, last_seq, contiguous)`` of the lane's batch in flight."""
        cdef Lane* lane = self._lane(lane_idx)
        if not lane.in_flight:
            raise ValueError(f"lane {lane_idx} has no batch in flight")
        cdef Entry* first = &lane.buf[lane.head]
        cdef Entry* last = &lane.buf[lane.head + lane.inflight_n - 1]
        return (first.seq, last.seq, last.seq - first.seq == <uint64_t>(lane.inflight_n - 1))

    def batch_offsets(self, Py_ssize_t lane_idx, uint64_t base):
        """The in-flight batch's seqs minus ``base``, as a uint64 array (for ``take``)."""
        cdef Lane* lane = self._lane(lane_idx)
        cdef Py_ssize_t i, n = lane.inflight_n
        out_buf = pa.allocate_buffer(8 * n)
        cdef uint64_t* out = <uint64_t*>buffer_address(out_buf)
        cdef Entry* src = &lane.buf[lane.head]
        with nogil:
            for i in range(n):
                out[i] = src[i].seq - base
        return pa.Array.from_buffers(pa.uint64(), n, [None, out_buf])

    def batch_arrivals(self, Py_ssize_t lane_idx):
        """``(first, last)`` arrival in epoch ms of the lane's batch in flight."""
        cdef Lane* lane = self._lane(lane_idx)
        return (lane.buf[lane.head].arrival_ms,
                lane.buf[lane.head + lane.inflight_n - 1].arrival_ms)

    # -- outcomes --------------------------------------------------------------

    cdef void _pop(self, Lane* lane, Py_ssize_t count) noexcept nogil:
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

    def complete(self, Py_ssize_t lane_idx, double now):
        """The lane's batch in flight is done: its records leave the FIFO."""
        cdef Lane* lane = self._inflight_lane(lane_idx)
        self._pop(lane, lane.inflight_n)
        if lane.n_pinned:
            lane.n_pinned -= 1
            memmove(lane.pinned, lane.pinned + 1, lane.n_pinned * sizeof(Py_ssize_t))
        lane.attempt = 1
        lane.retries = 0
        lane.retry_at = -_INF
        lane.idle_since = now

    def fail(self, Py_ssize_t lane_idx, double now, double retry_at):
        """The lane's batch in flight failed: retry the same records, not before ``retry_at``."""
        cdef Lane* lane = self._inflight_lane(lane_idx)
        if not lane.n_pinned:
            self._pin_front(lane, lane.inflight_n)
        lane.attempt += 1
        lane.retries += 1
        lane.retry_at = retry_at
        lane.idle_since = now

    def release(self, Py_ssize_t lane_idx):
        """Give the batch in flight back unchanged (not an attempt): e.g. an abandoned stop."""
        cdef Lane* lane = self._inflight_lane(lane_idx)
        if not lane.n_pinned:
            self._pin_front(lane, lane.inflight_n)

    # -- progress --------------------------------------------------------------

    def checkpoint(self):
        """Highest seq S with every record <= S done (-1 when none is)."""
        cdef uint64_t low = self.next_read
        cdef Py_ssize_t i
        for i in range(self.n_lanes):
            if self.lanes[i].head != self.lanes[i].tail and self.lanes[i].buf[self.lanes[i].head].seq < low:
                low = self.lanes[i].buf[self.lanes[i].head].seq
        return <int64_t>low - 1

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
            "in_flight": lane.in_flight,
            "inflight_n": lane.inflight_n,
            "pinned": [lane.pinned[i] for i in range(lane.n_pinned)],
            "attempt": lane.attempt,
            "retry_at": lane.retry_at,
        }
