"""The message state machine of an in-memory queue (``MemoryQueue``), SEMANTICS 3.

Messages are numbered in send order (their *index*); the payloads live in
Arrow chunks on the Python side, one chunk per send, and everything else about
a message lives here, in flat arrays indexed by ``index - base``: its state,
receive count, send time, the token of the timer that last armed it and, for
FIFO queues, its message group and the next message of that group.

- Standard queues keep the visible messages in a ring of *runs* (consecutive
  indices), in the order they became visible: a send pushes one run, a batch
  whose visibility timeout passed pushes its still-in-flight messages back.
- FIFO queues keep each group's messages as a linked list (``next_in_group``)
  and a ring of groups that may deliver (no message in flight, the first
  message visible): a receive takes whole runs of visible messages from the
  head of such groups, which are then locked until nothing of theirs is in
  flight, so order per group holds.
- Visibility deadlines and delays are timers over runs of messages; a timer
  only acts on the messages that still carry its token, so a message that was
  deleted, redriven or received again is simply skipped (no timer is ever
  removed). Deadlines that arrive in order (one visibility timeout, a clock
  that does not go back) go to a FIFO; the rest to a binary heap.

A message's id is ``prefix + 12 lowercase hex digits of its index``: UUID-shaped
(8-4-4-4-12), unique per queue, and mapped back to the index without a table.

Every per-message loop runs without the GIL. Not thread-safe: the owning
queue serialises every call with its lock.
"""

from cpython.unicode cimport PyUnicode_1BYTE_DATA, PyUnicode_GET_LENGTH, PyUnicode_KIND, PyUnicode_New
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, qsort, realloc
from libc.string cimport memcpy, memmove

import pyarrow as pa

from streamcore._arrow cimport buffer_address

cdef double _INF = float("inf")
SENT_TYPE = pa.timestamp("ms", tz="UTC")
cdef int64_t ID_LEN = 36
cdef int64_t PREFIX_LEN = 24
cdef int64_t MAX_INDEX = (<int64_t>1) << 48
cdef const char* HEX = b"0123456789abcdef"

# Slots of final messages below ``low`` are reclaimed once there are this many
# and they make up at least half of the arrays.
cdef int64_t COMPACT_MIN = 4096


# -- helpers -------------------------------------------------------------------

cdef int _grow(void** ptr, int64_t* cap, int64_t need, size_t item) except -1 nogil:
    # Make room for ``need`` items (doubling); raise MemoryError on failure.
    cdef int64_t new_cap
    cdef void* grown
    if need <= cap[0]:
        return 0
    new_cap = cap[0] * 2 if cap[0] else 64
    while new_cap < need:
        new_cap *= 2
    grown = realloc(ptr[0], <size_t>new_cap * item)
    if grown == NULL:
        with gil:
            raise MemoryError()
    ptr[0] = grown
    cap[0] = new_cap
    return 0


cdef int _grow_ring(void** ptr, int64_t* cap, int64_t head, int64_t length, size_t item) except -1 nogil:
    # Double a full ring buffer of ``length`` items from ``head``, keeping their order:
    # the part that wrapped to the front moves to follow the rest.
    cdef int64_t old = cap[0]
    cdef int64_t new_cap = old * 2 if old else 64
    cdef char* grown = <char*>realloc(ptr[0], <size_t>new_cap * item)
    if grown == NULL:
        with gil:
            raise MemoryError()
    if head + length > old:
        memcpy(grown + old * item, grown, <size_t>(head + length - old) * item)
    ptr[0] = grown
    cap[0] = new_cap
    return 0


cdef int _cmp_int64(const void* a, const void* b) noexcept nogil:
    cdef int64_t x = (<const int64_t*>a)[0]
    cdef int64_t y = (<const int64_t*>b)[0]
    return (x > y) - (x < y)


cdef bint _sorted_runs(int64_t* values, int64_t n) noexcept nogil:
    # Sort ascending unless already sorted; True when the values are consecutive.
    cdef int64_t i
    cdef bint ordered = True
    for i in range(1, n):
        if values[i] < values[i - 1]:
            ordered = False
            break
    if not ordered:
        qsort(values, <size_t>n, sizeof(int64_t), _cmp_int64)
    return n == 0 or values[n - 1] - values[0] == n - 1


def constant_int64(int64_t value, int64_t n):
    """An int64 array of ``n`` times ``value``."""
    buf = pa.allocate_buffer(max(8, 8 * n))
    cdef int64_t* out = <int64_t*>buffer_address(buf)
    cdef int64_t k
    with nogil:
        for k in range(n):
            out[k] = value
    return _int64_array(buf, n)


def index_ids(bytes prefix, int64_t first, int64_t n):
    """Message ids of ``first .. first + n - 1`` as a ``pyarrow.string()`` array."""
    _check_prefix(prefix)
    offsets_buf = pa.allocate_buffer(4 * (n + 1))
    data_buf = pa.allocate_buffer(max(1, ID_LEN * n))
    cdef int32_t* offsets = <int32_t*>buffer_address(offsets_buf)
    cdef char* data = <char*>buffer_address(data_buf)
    cdef const char* pre = prefix
    cdef int64_t i
    if (n + 1) * ID_LEN >= 2 ** 31:
        raise OverflowError(f"{n} message ids do not fit one string array")
    with nogil:
        for i in range(n + 1):
            offsets[i] = <int32_t>(i * ID_LEN)
        for i in range(n):
            _write_id(data + i * ID_LEN, pre, first + i)
    return pa.Array.from_buffers(pa.string(), n, [None, offsets_buf, data_buf])


cdef const int64_t* _int64_data(object array) except? NULL:
    # The values of an int64 Arrow array without nulls (NULL when empty).
    if array.type != pa.int64():
        raise TypeError(f"expected an int64 array, got {array.type}")
    if array.null_count:
        raise ValueError("expected an int64 array without nulls")
    if len(array) == 0:
        return NULL
    return (<const int64_t*>buffer_address(array.buffers()[1])) + <Py_ssize_t>array.offset


cdef object _int64_array(object buf, int64_t n):
    return pa.Array.from_buffers(pa.int64(), n, [None, buf])


cdef inline void _write_id(char* dst, const char* prefix, int64_t index) noexcept nogil:
    cdef int k
    memcpy(dst, prefix, PREFIX_LEN)
    for k in range(12):
        dst[PREFIX_LEN + 11 - k] = HEX[(index >> (4 * k)) & 15]


cdef inline int64_t _hex_digit(uint8_t c) noexcept nogil:
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


cdef bytes _check_prefix(bytes prefix):
    if len(prefix) != PREFIX_LEN:
        raise ValueError(f"prefix must be {PREFIX_LEN} ASCII bytes, got {prefix!r}")
    return prefix


def format_ids(bytes prefix, indices):
    """Message ids of ``indices`` (an int64 array) as a ``pyarrow.string()`` array."""
    _check_prefix(prefix)
    cdef int64_t n = len(indices)
    cdef const int64_t* idx = _int64_data(indices)
    offsets_buf = pa.allocate_buffer(4 * (n + 1))
    data_buf = pa.allocate_buffer(max(1, ID_LEN * n))
    cdef int32_t* offsets = <int32_t*>buffer_address(offsets_buf)
    cdef char* data = <char*>buffer_address(data_buf)
    cdef const char* pre = prefix
    cdef int64_t i
    with nogil:
        for i in range(n + 1):
            offsets[i] = <int32_t>(i * ID_LEN)
        for i in range(n):
            _write_id(data + i * ID_LEN, pre, idx[i])
    return pa.Array.from_buffers(pa.string(), n, [None, offsets_buf, data_buf])


def id_list(bytes prefix, int64_t first, int64_t n):
    """Message ids of ``first .. first + n - 1`` as a list of ``str``."""
    _check_prefix(prefix)
    cdef list out = [None] * n
    cdef const char* pre = prefix
    cdef int64_t i
    cdef str s
    for i in range(n):
        s = PyUnicode_New(ID_LEN, 127)
        _write_id(<char*>PyUnicode_1BYTE_DATA(s), pre, first + i)
        out[i] = s
    return out


cdef inline bint memcmp_prefix(const uint8_t* chars, const char* prefix) noexcept nogil:
    cdef int64_t k
    for k in range(PREFIX_LEN):
        if chars[k] != <uint8_t>prefix[k]:
            return False
    return True


def parse_ids(bytes prefix, ids, bint strict=True):
    """Indices of message ids (a sequence of ``str``) as an int64 array.

    An id that is not a ``str`` of this queue's shape and prefix raises
    ``ValueError`` (``strict``) or maps to -1.
    """
    _check_prefix(prefix)
    cdef int64_t n = len(ids)
    buf = pa.allocate_buffer(max(8, 8 * n))
    cdef int64_t* out = <int64_t*>buffer_address(buf)
    cdef const char* pre = prefix
    cdef const uint8_t* chars
    cdef int64_t i, value, digit
    cdef int k
    for i in range(n):
        item = ids[i]
        value = -1
        if (type(item) is str and PyUnicode_GET_LENGTH(item) == ID_LEN
                and PyUnicode_KIND(item) == 1):
            chars = <const uint8_t*>PyUnicode_1BYTE_DATA(item)
            if memcmp_prefix(chars, pre):
                value = 0
                for k in range(PREFIX_LEN, ID_LEN):
                    digit = _hex_digit(chars[k])
                    if digit < 0:
                        value = -1
                        break
                    value = value * 16 + digit
        if value < 0 and strict:
            raise ValueError(f"message id {item!r} is not an id of this queue")
        out[i] = value
    return _int64_array(buf, n)


# -- the state machine ---------------------------------------------------------

cdef class QueueCore:
    """Per-message state of one queue: visibility, receive counts, delays, groups.

    Parameters
    ----------
    fifo : bool
        FIFO queue: messages carry a group index; order per group holds and a
        group with a message in flight delivers nothing newer.
    retention : float
        Seconds after its send at which a message is dropped, whatever its state.
    prefix : bytes
        The 24 ASCII bytes every message id starts with (``xxxxxxxx-xxxx-xxxx-xxxx-``).

    Not thread-safe: the caller serialises every call.
    """

    def __cinit__(self, *args, **kwargs):
        self.state = NULL  # every array starts empty; __dealloc__ frees what was allocated

    def __init__(self, bint fifo, double retention, bytes prefix):
        if self.end:
            raise TypeError("QueueCore is initialised once")
        _check_prefix(prefix)
        self.fifo = fifo
        self.retention_ms = <int64_t>(retention * 1000)
        self.prefix_bytes = prefix
        self.next_token = 1
        self.last_sent_ms = -(2 ** 62)

    def __dealloc__(self):
        free(self.state)
        free(self.rcount)
        free(self.token)
        free(self.sent_ms)
        free(self.nbytes)
        free(self.group)
        free(self.next_in_group)
        free(self.chunk_first)
        free(self.chunk_alive)
        free(self.dead_chunks)
        free(self.ring)
        free(self.tfifo)
        free(self.heap)
        free(self.g_head)
        free(self.g_tail)
        free(self.g_inflight)
        free(self.g_queued)
        free(self.g_free)
        free(self.avail)
        free(self.freed)
        free(self.redriven)
        free(self.scratch)

    # -- storage ---------------------------------------------------------------

    cdef int _reserve(self, int64_t n) except -1 nogil:
        # Room for ``n`` more messages in every per-message array.
        cdef int64_t need = self.end - self.base + n
        cdef int64_t cap
        if need <= self.cap:
            return 0
        cap = self.cap
        _grow(<void**>&self.state, &cap, need, sizeof(uint8_t))
        cap = self.cap
        _grow(<void**>&self.rcount, &cap, need, sizeof(int64_t))
        cap = self.cap
        _grow(<void**>&self.token, &cap, need, sizeof(uint64_t))
        cap = self.cap
        _grow(<void**>&self.sent_ms, &cap, need, sizeof(int64_t))
        cap = self.cap
        _grow(<void**>&self.nbytes, &cap, need, sizeof(uint32_t))
        if self.fifo:
            cap = self.cap
            _grow(<void**>&self.group, &cap, need, sizeof(int32_t))
            cap = self.cap
            _grow(<void**>&self.next_in_group, &cap, need, sizeof(int64_t))
        self.cap = cap
        return 0

    cdef int _reserve_groups(self, int32_t n) except -1 nogil:
        # Groups 0 .. n - 1 exist; new ones start empty.
        cdef int64_t cap
        cdef int32_t g
        if n <= self.n_groups:
            return 0
        if n > self.g_cap:
            cap = self.g_cap
            _grow(<void**>&self.g_head, &cap, n, sizeof(int64_t))
            cap = self.g_cap
            _grow(<void**>&self.g_tail, &cap, n, sizeof(int64_t))
            cap = self.g_cap
            _grow(<void**>&self.g_inflight, &cap, n, sizeof(int32_t))
            cap = self.g_cap
            _grow(<void**>&self.g_queued, &cap, n, sizeof(uint8_t))
            cap = self.g_cap
            _grow(<void**>&self.g_free, &cap, n, sizeof(uint8_t))
            self.g_cap = <int32_t>cap
        for g in range(self.n_groups, n):
            self.g_head[g] = -1
            self.g_tail[g] = -1
            self.g_inflight[g] = 0
            self.g_queued[g] = 0
            self.g_free[g] = 0
        self.n_groups = n
        return 0

    cdef int _add_chunk(self, int64_t first, int64_t count) except -1 nogil:
        cdef int64_t cap = self.chunk_cap
        _grow(<void**>&self.chunk_first, &cap, self.n_chunks + 1, sizeof(int64_t))
        cap = self.chunk_cap
        _grow(<void**>&self.chunk_alive, &cap, self.n_chunks + 1, sizeof(int64_t))
        self.chunk_cap = cap
        self.chunk_first[self.n_chunks] = first
        self.chunk_alive[self.n_chunks] = count
        self.n_chunks += 1
        return 0

    cdef int64_t _chunk_of(self, int64_t index) noexcept nogil:
        # Position of the chunk holding ``index`` (the last chunk starting at or before it).
        cdef int64_t lo = self.chunk_lo, hi = self.n_chunks - 1, mid
        while lo < hi:
            mid = (lo + hi + 1) >> 1
            if self.chunk_first[mid] <= index:
                lo = mid
            else:
                hi = mid - 1
        return lo

    # -- rings and timers ------------------------------------------------------

    cdef int _push_run(self, int64_t start, int64_t count) except -1 nogil:
        cdef int64_t tail
        cdef Run* last
        if self.ring_len:
            last = &self.ring[(self.ring_head + self.ring_len - 1) % self.ring_cap]
            if last.start + last.count == start:
                last.count += count
                return 0
        if self.ring_len == self.ring_cap:
            _grow_ring(<void**>&self.ring, &self.ring_cap, self.ring_head, self.ring_len, sizeof(Run))
        tail = (self.ring_head + self.ring_len) % self.ring_cap
        self.ring[tail].start = start
        self.ring[tail].count = count
        self.ring_len += 1
        return 0

    cdef int _push_timer(self, double due, int64_t start, int64_t count, uint64_t token) except -1 nogil:
        cdef int64_t i, parent
        cdef Timer t
        t.due = due
        t.start = start
        t.count = count
        t.token = token
        if self.tfifo_len == 0 or self.tfifo[(self.tfifo_head + self.tfifo_len - 1) % self.tfifo_cap].due <= due:
            if self.tfifo_len == self.tfifo_cap:
                _grow_ring(<void**>&self.tfifo, &self.tfifo_cap, self.tfifo_head, self.tfifo_len, sizeof(Timer))
            self.tfifo[(self.tfifo_head + self.tfifo_len) % self.tfifo_cap] = t
            self.tfifo_len += 1
            return 0
        _grow(<void**>&self.heap, &self.heap_cap, self.heap_len + 1, sizeof(Timer))
        i = self.heap_len
        self.heap_len += 1
        while i > 0:
            parent = (i - 1) >> 1
            if self.heap[parent].due <= due:
                break
            self.heap[i] = self.heap[parent]
            i = parent
        self.heap[i] = t
        return 0

    cdef void _heap_pop(self) noexcept nogil:
        cdef int64_t i = 0, child
        cdef Timer last
        self.heap_len -= 1
        if self.heap_len == 0:
            return
        last = self.heap[self.heap_len]
        while True:
            child = 2 * i + 1
            if child >= self.heap_len:
                break
            if child + 1 < self.heap_len and self.heap[child + 1].due < self.heap[child].due:
                child += 1
            if last.due <= self.heap[child].due:
                break
            self.heap[i] = self.heap[child]
            i = child
        self.heap[i] = last

    cdef bint _timer_live(self, Timer* t) noexcept nogil:
        cdef int64_t m
        cdef uint8_t st
        for m in range(t.start if t.start > self.base else self.base, t.start + t.count):
            st = self.state[m - self.base]
            if self.token[m - self.base] == t.token and (st == IN_FLIGHT or st == DELAYED):
                return True
        return False

    cdef int _fire(self, Timer* t) except -1 nogil:
        # The messages of ``t`` that still carry its token become visible.
        cdef int64_t m, i, run_start = 0, run_n = 0
        cdef uint8_t st
        cdef int32_t g
        for m in range(t.start if t.start > self.base else self.base, t.start + t.count):
            i = m - self.base
            st = self.state[i]
            if self.token[i] != t.token or (st != IN_FLIGHT and st != DELAYED):
                if run_n:
                    self._push_run(run_start, run_n)
                    run_n = 0
                continue
            self.state[i] = VISIBLE
            self.n_visible += 1
            if st == IN_FLIGHT:
                self.n_in_flight -= 1
            else:
                self.n_delayed -= 1
            if self.fifo:
                g = self.group[i]
                if st == IN_FLIGHT:
                    self.g_inflight[g] -= 1
                self._maybe_avail(g)
            elif run_n:
                run_n += 1
            else:
                run_start = m
                run_n = 1
        if run_n:
            self._push_run(run_start, run_n)
        return 0

    cdef int _advance(self, double now) except -1 nogil:
        # Apply retention, then every timer due at ``now``.
        cdef Timer t
        cdef bint from_fifo
        self._expire(now)
        while True:
            from_fifo = False
            if self.tfifo_len and self.tfifo[self.tfifo_head].due <= now:
                from_fifo = not self.heap_len or self.tfifo[self.tfifo_head].due <= self.heap[0].due
            if from_fifo:
                t = self.tfifo[self.tfifo_head]
                self.tfifo_head = (self.tfifo_head + 1) % self.tfifo_cap
                self.tfifo_len -= 1
            elif self.heap_len and self.heap[0].due <= now:
                t = self.heap[0]
                self._heap_pop()
            else:
                break
            self._fire(&t)
        return 0

    cdef int _expire(self, double now) except -1 nogil:
        cdef int64_t cutoff = <int64_t>(now * 1000) - self.retention_ms
        if self.expire_from < self.base:
            self.expire_from = self.base
        while self.expire_from < self.end and self.sent_ms[self.expire_from - self.base] < cutoff:
            self._finalize(self.expire_from, EXPIRED)
            self.expire_from += 1
        return 0

    # -- state changes ---------------------------------------------------------

    cdef int _push_avail(self, int32_t g) except -1 nogil:
        if self.avail_len == self.avail_cap:
            _grow_ring(<void**>&self.avail, &self.avail_cap, self.avail_head, self.avail_len, sizeof(int32_t))
        self.avail[(self.avail_head + self.avail_len) % self.avail_cap] = g
        self.avail_len += 1
        self.g_queued[g] = 1
        return 0

    cdef int _maybe_avail(self, int32_t g) except -1 nogil:
        # Queue group ``g`` for delivery if nothing of it is in flight and its head is visible.
        cdef int64_t h
        if self.g_queued[g] or self.g_inflight[g] > 0:
            return 0
        h = self.g_head[g]
        if h == -1 or self.state[h - self.base] != VISIBLE:
            return 0
        return self._push_avail(g)

    cdef int _finalize(self, int64_t index, uint8_t final) except -1 nogil:
        # Move a message to a final state (no-op if it is in one already).
        cdef int64_t i = index - self.base, c, h
        cdef uint8_t st = self.state[i]
        cdef int32_t g
        if st >= DELETED:
            return 0
        if st == VISIBLE:
            self.n_visible -= 1
        elif st == IN_FLIGHT:
            self.n_in_flight -= 1
        elif st == DELAYED:
            self.n_delayed -= 1
        self.state[i] = final
        c = self._chunk_of(index)
        self.chunk_alive[c] -= 1
        if self.chunk_alive[c] == 0:
            _grow(<void**>&self.dead_chunks, &self.dead_chunks_cap, self.n_dead_chunks + 1, sizeof(int64_t))
            self.dead_chunks[self.n_dead_chunks] = self.chunk_first[c]
            self.n_dead_chunks += 1
        if not self.fifo:
            return 0
        g = self.group[i]
        if st == IN_FLIGHT:
            self.g_inflight[g] -= 1
        if self.g_head[g] == index:
            h = index
            while h != -1 and self.state[h - self.base] >= DELETED:
                h = self.next_in_group[h - self.base]
            self.g_head[g] = h
            if h == -1:
                self.g_tail[g] = -1
        if self.g_head[g] != -1:
            return self._maybe_avail(g)
        if self.g_free[g] == 0:
            self.g_free[g] = 1
            _grow(<void**>&self.freed, &self.freed_cap, self.n_freed + 1, sizeof(int32_t))
            self.freed[self.n_freed] = g
            self.n_freed += 1
        return 0

    cdef int _push_redriven(self, int64_t index) except -1 nogil:
        _grow(<void**>&self.redriven, &self.redriven_cap, self.n_redriven + 1, sizeof(int64_t))
        self.redriven[self.n_redriven] = index
        self.n_redriven += 1
        return 0

    cdef int _receive_one(self, int64_t index, uint64_t tok) noexcept nogil:
        # A visible message is received; 1 when this is its first receive.
        cdef int64_t i = index - self.base
        self.state[i] = IN_FLIGHT
        self.rcount[i] += 1
        self.token[i] = tok
        self.n_visible -= 1
        self.n_in_flight += 1
        if self.fifo:
            self.g_inflight[self.group[i]] += 1
        return self.rcount[i] == 1

    cdef int64_t _receive_standard(self, int64_t* out, int64_t max_n, int64_t max_rc,
                                   int64_t max_bytes, uint64_t tok) except -1 nogil:
        cdef int64_t got = 0, m, i, total = 0
        cdef Run* run
        while got < max_n and self.ring_len:
            run = &self.ring[self.ring_head]
            if run.start < self.base:  # reclaimed slots: every one of them is final
                run.count -= self.base - run.start
                run.start = self.base
            while run.count > 0 and got < max_n:
                m = run.start
                i = m - self.base
                if self.state[i] == VISIBLE and max_rc > 0 and self.rcount[i] >= max_rc:
                    self._finalize(m, DEAD)
                    self._push_redriven(m)
                elif self.state[i] == VISIBLE:
                    if max_bytes > 0 and got and total + self.nbytes[i] > max_bytes:
                        return got  # the batch is full by size; m stays first in line
                    total += self.nbytes[i]
                    self._receive_one(m, tok)
                    out[got] = m
                    got += 1
                run.start += 1
                run.count -= 1
            if run.count <= 0:
                self.ring_head = (self.ring_head + 1) % self.ring_cap
                self.ring_len -= 1
        return got

    cdef int64_t _receive_fifo(self, int64_t* out, int64_t max_n, int64_t max_rc,
                               int64_t max_bytes, uint64_t tok) except -1 nogil:
        # Whole groups in the order they became available; from each, the visible
        # messages at its head, in order, until the batch is full.
        cdef int64_t got = 0, m, i, nxt, total = 0
        cdef int32_t g
        cdef uint8_t st
        cdef bint full = False
        while got < max_n and self.avail_len and not full:
            g = self.avail[self.avail_head]
            self.avail_head = (self.avail_head + 1) % self.avail_cap
            self.avail_len -= 1
            self.g_queued[g] = 0
            if self.g_inflight[g] > 0:
                continue
            m = self.g_head[g]
            while m != -1 and got < max_n:
                i = m - self.base
                st = self.state[i]
                nxt = self.next_in_group[i]
                if st >= DELETED:
                    m = nxt
                    continue
                if st != VISIBLE:
                    break
                if max_rc > 0 and self.rcount[i] >= max_rc:
                    self._finalize(m, DEAD)
                    self._push_redriven(m)
                else:
                    if max_bytes > 0 and got and total + self.nbytes[i] > max_bytes:
                        full = True
                        break
                    total += self.nbytes[i]
                    self._receive_one(m, tok)
                    out[got] = m
                    got += 1
                m = nxt
            self._maybe_avail(g)  # e.g. the batch filled up before this group gave anything
        return got

    cdef bint _fifo_receivable(self) noexcept nogil:
        # Drop stale entries from the front of the group ring; True if one may deliver.
        cdef int32_t g
        cdef int64_t h
        while self.avail_len:
            g = self.avail[self.avail_head]
            h = self.g_head[g]
            if self.g_inflight[g] == 0 and h != -1 and self.state[h - self.base] == VISIBLE:
                return True
            self.avail_head = (self.avail_head + 1) % self.avail_cap
            self.avail_len -= 1
            self.g_queued[g] = 0
        return False

    cdef void _compact(self) noexcept nogil:
        # Reclaim the slots of final messages below ``low`` and of dead chunks at the front.
        cdef int64_t d, live
        while self.low < self.end and self.state[self.low - self.base] >= DELETED:
            self.low += 1
        while self.chunk_lo < self.n_chunks - 1 and self.chunk_alive[self.chunk_lo] == 0:
            self.chunk_lo += 1
        if self.chunk_lo >= 1024 and self.chunk_lo * 2 >= self.n_chunks:
            live = self.n_chunks - self.chunk_lo
            memmove(self.chunk_first, self.chunk_first + self.chunk_lo, <size_t>live * sizeof(int64_t))
            memmove(self.chunk_alive, self.chunk_alive + self.chunk_lo, <size_t>live * sizeof(int64_t))
            self.n_chunks = live
            self.chunk_lo = 0
        d = self.low - self.base
        if d < COMPACT_MIN or d * 2 < self.end - self.base:
            return
        live = self.end - self.low
        memmove(self.state, self.state + d, <size_t>live * sizeof(uint8_t))
        memmove(self.rcount, self.rcount + d, <size_t>live * sizeof(int64_t))
        memmove(self.token, self.token + d, <size_t>live * sizeof(uint64_t))
        memmove(self.sent_ms, self.sent_ms + d, <size_t>live * sizeof(int64_t))
        memmove(self.nbytes, self.nbytes + d, <size_t>live * sizeof(uint32_t))
        if self.fifo:
            memmove(self.group, self.group + d, <size_t>live * sizeof(int32_t))
            memmove(self.next_in_group, self.next_in_group + d, <size_t>live * sizeof(int64_t))
        self.base = self.low

    # -- the Python surface ----------------------------------------------------

    def append(self, int64_t n, double now, double delay, groups=None, sizes=None):
        """Add ``n`` messages sent at ``now``; returns the index of the first.

        They are visible at once, or after ``delay`` seconds. FIFO queues pass
        ``groups``: each message's group index (int32 array, no nulls).
        ``sizes`` (uint32 array) are the payload bytes of each message, for the
        ``max_bytes`` of ``receive`` (0 when not given).
        """
        cdef int64_t first = self.end, k, m, i
        cdef int64_t sent = <int64_t>(now * 1000)
        cdef uint64_t tok = 0
        cdef uint8_t st = VISIBLE
        cdef const int32_t* grp = NULL
        cdef int32_t g, max_g = -1
        if n < 0:
            raise ValueError(f"n={n} is invalid: expected >= 0")
        if first + n >= MAX_INDEX:
            raise OverflowError("this queue has used every message index")
        if self.fifo:
            if groups is None or len(groups) != n or groups.type != pa.int32() or groups.null_count:
                raise ValueError("a FIFO queue needs one group index (int32, not null) per message")
            if n:
                grp = (<const int32_t*>buffer_address(groups.buffers()[1])) + <Py_ssize_t>groups.offset
        elif groups is not None:
            raise ValueError("groups are for FIFO queues")
        cdef const uint32_t* size = NULL
        if sizes is not None:
            if len(sizes) != n or sizes.type != pa.uint32() or sizes.null_count:
                raise ValueError("sizes must be a uint32 array with one value per message")
            if n:
                size = (<const uint32_t*>buffer_address(sizes.buffers()[1])) + <Py_ssize_t>sizes.offset
        if n == 0:
            return first
        if sent < self.last_sent_ms:
            sent = self.last_sent_ms  # send times never go back, so retention drops a prefix
        self.last_sent_ms = sent
        if delay > 0:
            st = DELAYED
            tok = self.next_token
            self.next_token += 1
        with nogil:
            self._reserve(n)
            for k in range(n):
                i = first - self.base + k
                self.state[i] = st
                self.rcount[i] = 0
                self.token[i] = tok
                self.sent_ms[i] = sent
                self.nbytes[i] = size[k] if size != NULL else 0
            if grp != NULL:
                for k in range(n):
                    if grp[k] < 0:
                        with gil:
                            raise ValueError(f"group index {grp[k]} is negative")
                    if grp[k] > max_g:
                        max_g = grp[k]
                self._reserve_groups(max_g + 1)
            self.end = first + n
            self._add_chunk(first, n)
            if st == VISIBLE:
                self.n_visible += n
            else:
                self.n_delayed += n
            if grp != NULL:
                for k in range(n):
                    m = first + k
                    i = m - self.base
                    g = grp[k]
                    self.group[i] = g
                    self.next_in_group[i] = -1
                    self.g_free[g] = 0
                    if self.g_head[g] == -1:
                        self.g_head[g] = m
                    else:
                        self.next_in_group[self.g_tail[g] - self.base] = m
                    self.g_tail[g] = m
                    if st == VISIBLE:
                        self._maybe_avail(g)
            elif st == VISIBLE:
                self._push_run(first, n)
            if st == DELAYED:
                self._push_timer(now + delay, first, n, tok)
        return first

    def receive(self, int64_t max_n, double now, double visibility, int64_t max_receive_count=0,
                int64_t max_bytes=0):
        """Receive up to ``max_n`` visible messages for ``visibility`` seconds.

        With ``max_bytes`` > 0 the batch also stops before the message that would
        take its payload bytes past it (a larger first message comes alone). A
        message whose receive count would exceed ``max_receive_count`` (> 0) is
        not received but moved out (state DEAD) and reported as redriven.

        Returns ``(n, first, last, indices, counts, max_receive_count, last_sent_ms,
        first_receives, chunk, offset, redriven)``: how many were received, the
        first and last index; ``indices`` (int64, ascending) or None when they are
        consecutive; ``counts`` (int64 receive counts) or None when every count is
        ``max_receive_count``; the latest send time (epoch ms); how many were
        received for the first time; ``chunk``/``offset``: when the batch lies
        consecutive within one chunk, that chunk's first index and the batch's
        offset in it (else -1, -1); ``redriven``: the redriven indices ascending
        (int64), or None.
        """
        cdef int64_t got, k, i, first_receives = 0, run_start, max_rc = 0, min_rc = 0, max_sent = 0
        cdef int64_t chunk = -1, offset = -1, c, bound
        cdef uint64_t tok
        cdef bint consecutive
        cdef int64_t* rdata
        cdef int64_t* out
        cdef int64_t* rc
        if max_n < 1:
            raise ValueError(f"max_n={max_n} is invalid: expected >= 1")
        _grow(<void**>&self.scratch, &self.scratch_cap, max_n, sizeof(int64_t))
        out = self.scratch
        tok = self.next_token
        self.next_token += 1
        self.n_redriven = 0
        with nogil:
            self._advance(now)
            if self.fifo:
                got = self._receive_fifo(out, max_n, max_receive_count, max_bytes, tok)
            else:
                got = self._receive_standard(out, max_n, max_receive_count, max_bytes, tok)
            consecutive = _sorted_runs(out, got)
            # One timer per run of consecutive indices (usually one per batch).
            run_start = 0
            for k in range(1, got + 1):
                if k == got or out[k] != out[k - 1] + 1:
                    self._push_timer(now + visibility, out[run_start], k - run_start, tok)
                    run_start = k
            if got and consecutive:
                c = self._chunk_of(out[0])
                bound = self.chunk_first[c + 1] if c + 1 < self.n_chunks else self.end
                if out[got - 1] < bound:
                    chunk = self.chunk_first[c]
                    offset = out[0] - chunk
            if got:
                min_rc = self.rcount[out[0] - self.base]
            for k in range(got):
                i = out[k] - self.base
                if self.rcount[i] == 1:
                    first_receives += 1
                if self.rcount[i] > max_rc:
                    max_rc = self.rcount[i]
                if self.rcount[i] < min_rc:
                    min_rc = self.rcount[i]
                if self.sent_ms[i] > max_sent:
                    max_sent = self.sent_ms[i]
        redriven = None
        if self.n_redriven:
            rbuf = pa.allocate_buffer(8 * self.n_redriven)
            rdata = <int64_t*>buffer_address(rbuf)
            with nogil:  # no compaction here: the caller still reads the redriven payloads
                memcpy(rdata, self.redriven, <size_t>self.n_redriven * sizeof(int64_t))
                _sorted_runs(rdata, self.n_redriven)
            redriven = _int64_array(rbuf, self.n_redriven)
        if not got:
            return (0, -1, -1, None, None, 0, 0, 0, -1, -1, redriven)
        indices = None
        if not consecutive:
            ibuf = pa.allocate_buffer(8 * got)
            memcpy(<void*>buffer_address(ibuf), out, <size_t>got * sizeof(int64_t))
            indices = _int64_array(ibuf, got)
        counts = None
        if min_rc != max_rc:
            cbuf = pa.allocate_buffer(8 * got)
            rc = <int64_t*>buffer_address(cbuf)
            for k in range(got):
                rc[k] = self.rcount[out[k] - self.base]
            counts = _int64_array(cbuf, got)
        return (got, out[0], out[got - 1], indices, counts, max_rc, max_sent, first_receives, chunk, offset,
                redriven)

    cdef int _receipt(self, int64_t first, int64_t n, object indices, object counts, int64_t rc,
                      const int64_t** idx, const int64_t** rcs) except -1:
        # A batch's receipt: its indices (or the range first .. first + n - 1) and
        # receive counts (or ``rc`` for all of them).
        idx[0] = NULL
        rcs[0] = NULL
        if indices is not None:
            if len(indices) != n:
                raise ValueError("indices must have n values")
            idx[0] = _int64_data(indices)
        if counts is not None:
            if len(counts) != n:
                raise ValueError("counts must have n values")
            rcs[0] = _int64_data(counts)
        return 0

    def settle(self, int64_t first, int64_t n, indices, counts, int64_t rc, skip=None):
        """Delete a received batch by its receipt (see ``receive``), except the positions
        with a non-zero byte in ``skip``; returns how many were deleted.

        A message is deleted only while it is in flight or visible with the
        receive count it was received with: not once it was received again.
        """
        cdef const int64_t* idx
        cdef const int64_t* rcs
        cdef const uint8_t* mask = NULL
        cdef bytes mask_bytes
        cdef int64_t k, m, i, want, deleted = 0
        cdef uint8_t st
        self._receipt(first, n, indices, counts, rc, &idx, &rcs)
        if skip is not None:
            mask_bytes = bytes(skip)
            if len(mask_bytes) != n:
                raise ValueError("skip must have one entry per message")
            if n:
                mask = <const uint8_t*><const char*>mask_bytes
        with nogil:
            for k in range(n):
                if mask != NULL and mask[k]:
                    continue
                m = idx[k] if idx != NULL else first + k
                want = rcs[k] if rcs != NULL else rc
                if m < self.base or m >= self.end:
                    continue
                i = m - self.base
                st = self.state[i]
                if (st != IN_FLIGHT and st != VISIBLE) or self.rcount[i] != want:
                    continue
                self._finalize(m, DELETED)
                deleted += 1
            self._compact()
        return deleted

    def release(self, int64_t first, int64_t n, indices, counts, int64_t rc, double now):
        """The messages of a received batch still in flight with that receipt become visible now."""
        cdef const int64_t* idx
        cdef const int64_t* rcs
        cdef int64_t k, m, i, want
        cdef Timer t
        self._receipt(first, n, indices, counts, rc, &idx, &rcs)
        t.token = self.next_token
        self.next_token += 1
        t.due = now
        t.count = 1
        with nogil:
            self._advance(now)
            for k in range(n):
                m = idx[k] if idx != NULL else first + k
                want = rcs[k] if rcs != NULL else rc
                if m < self.base or m >= self.end:
                    continue
                i = m - self.base
                if self.state[i] != IN_FLIGHT or self.rcount[i] != want:
                    continue
                self.token[i] = t.token
                t.start = m
                self._fire(&t)

    def positions(self, wanted, int64_t first, int64_t n, indices):
        """Position of each of ``wanted`` (int64 indices) in a batch (-1: not in it), as a list."""
        cdef const int64_t* idx = NULL
        cdef const int64_t* want = _int64_data(wanted)
        cdef int64_t w = len(wanted), k, lo, hi, mid, x
        if indices is not None:
            idx = _int64_data(indices)
        out = [-1] * w
        for k in range(w):
            x = want[k]
            if idx == NULL:
                if first <= x < first + n:
                    out[k] = x - first
                continue
            lo = 0
            hi = n
            while lo < hi:
                mid = (lo + hi) >> 1
                if idx[mid] < x:
                    lo = mid + 1
                else:
                    hi = mid
            if lo < n and idx[lo] == x:
                out[k] = lo
        return out

    def batch_columns(self, int64_t first, int64_t n, indices, counts, int64_t rc):
        """``(indices, counts)`` of a batch as int64 arrays, whichever form its receipt has."""
        cdef int64_t k
        ibuf = pa.allocate_buffer(8 * n)
        cbuf = pa.allocate_buffer(8 * n)
        cdef int64_t* iout = <int64_t*>buffer_address(ibuf)
        cdef int64_t* cout = <int64_t*>buffer_address(cbuf)
        cdef const int64_t* idx
        cdef const int64_t* rcs
        self._receipt(first, n, indices, counts, rc, &idx, &rcs)
        for k in range(n):
            iout[k] = idx[k] if idx != NULL else first + k
            cout[k] = rcs[k] if rcs != NULL else rc
        return (_int64_array(ibuf, n), _int64_array(cbuf, n))

    def delete(self, indices):
        """Delete messages by index, whatever their state; returns how many were deleted.

        Unknown or final messages are ignored.
        """
        cdef int64_t n = len(indices), k, m, deleted = 0
        cdef const int64_t* idx = _int64_data(indices)
        with nogil:
            for k in range(n):
                m = idx[k]
                if m < self.base or m >= self.end or self.state[m - self.base] >= DELETED:
                    continue
                self._finalize(m, DELETED)
                deleted += 1
            self._compact()
        return deleted

    def change_visibility(self, indices, receive_counts, double timeout, double now):
        """Messages in flight (with these receive counts, if given) become visible
        ``timeout`` seconds from ``now`` (at once for 0); returns how many changed."""
        cdef int64_t n = len(indices), k, m, i, changed = 0, run_start = -1, run_n = 0
        cdef const int64_t* idx = _int64_data(indices)
        cdef const int64_t* rc = NULL
        cdef uint64_t tok = self.next_token
        cdef Timer t
        self.next_token += 1
        if receive_counts is not None:
            if len(receive_counts) != n:
                raise ValueError("receive_counts must have one value per index")
            rc = _int64_data(receive_counts)
        with nogil:
            self._advance(now)
            for k in range(n + 1):
                if k < n:
                    m = idx[k]
                    if m < self.base or m >= self.end:
                        continue
                    i = m - self.base
                    if self.state[i] != IN_FLIGHT or (rc != NULL and self.rcount[i] != rc[k]):
                        continue
                    self.token[i] = tok
                    changed += 1
                    if run_n and m == run_start + run_n:
                        run_n += 1
                        continue
                if run_n:
                    t.due = now + timeout
                    t.start = run_start
                    t.count = run_n
                    t.token = tok
                    if timeout <= 0:
                        self._fire(&t)
                    else:
                        self._push_timer(t.due, run_start, run_n, tok)
                if k < n:
                    run_start = m
                    run_n = 1
        return changed

    def advance(self, double now):
        """Apply retention and every timer due at ``now``."""
        with nogil:
            self._advance(now)
            self._compact()

    def counts(self, double now):
        """``(visible, in_flight, delayed)`` at ``now``."""
        self.advance(now)
        return (self.n_visible, self.n_in_flight, self.n_delayed)

    def receivable(self, double now):
        """True when a receive at ``now`` would get (or redrive) a message."""
        self.advance(now)
        if self.fifo:
            return self._fifo_receivable()
        return self.n_visible > 0

    def next_due(self, double now):
        """Clock time of the next timer (a visibility deadline or a delay) after ``now``, or inf."""
        cdef double due = _INF
        self.advance(now)
        while self.tfifo_len and not self._timer_live(&self.tfifo[self.tfifo_head]):
            self.tfifo_head = (self.tfifo_head + 1) % self.tfifo_cap
            self.tfifo_len -= 1
        while self.heap_len and not self._timer_live(&self.heap[0]):
            self._heap_pop()
        if self.tfifo_len:
            due = self.tfifo[self.tfifo_head].due
        if self.heap_len and self.heap[0].due < due:
            due = self.heap[0].due
        return due

    def oldest_sent_ms(self):
        """Send time (epoch ms) of the oldest message not yet final, or None."""
        self._compact()
        if self.low >= self.end:
            return None
        return self.sent_ms[self.low - self.base]

    def take_dead_chunks(self):
        """First indices of the chunks whose messages all became final since the last call."""
        out = [self.dead_chunks[k] for k in range(self.n_dead_chunks)]
        self.n_dead_chunks = 0
        return out

    def take_freed_groups(self):
        """Group indices that became empty (no message left) since the last call.

        The caller may give them to new groups; until it appends to one, it
        stays empty.
        """
        cdef int64_t k
        cdef int32_t g
        out = []
        for k in range(self.n_freed):
            g = self.freed[k]
            if self.g_free[g] == 1 and self.g_head[g] == -1:
                self.g_free[g] = 2
                out.append(g)
        self.n_freed = 0
        return out

    def segments(self, indices):
        """Where ascending ``indices`` live: ``[(chunk_first, position, count, first)]``.

        ``indices[position:position + count]`` all fall in the chunk that starts
        at ``chunk_first``; ``first`` is the first of them when they are
        consecutive, else -1.
        """
        cdef int64_t n = len(indices), k = 0, start, c, bound
        cdef const int64_t* idx = _int64_data(indices)
        out = []
        while k < n:
            if idx[k] < self.base or idx[k] >= self.end:
                raise IndexError(f"message index {idx[k]} is not held")
            c = self._chunk_of(idx[k])
            bound = self.chunk_first[c + 1] if c + 1 < self.n_chunks else self.end
            start = k
            while k < n and idx[k] < bound:
                k += 1
            out.append((self.chunk_first[c], start, k - start,
                        idx[start] if idx[k - 1] - idx[start] == k - 1 - start else -1))
        return out

    def ids(self, int64_t first, int64_t n):
        """Message ids of ``first .. first + n - 1`` as a list of ``str``."""
        return id_list(self.prefix_bytes, first, n)

    def parse(self, ids, bint strict=True):
        """Indices of message ids of this queue (see ``parse_ids``)."""
        return parse_ids(self.prefix_bytes, ids, strict)

    def __len__(self):
        return self.n_visible + self.n_in_flight + self.n_delayed
