from libc.stdint cimport uint8_t, uintptr_t


# An input buffer's address for native reads: never NULL (a missing or empty buffer
# points at a zero byte); a buffer outside CPU memory raises InvalidRecordsError.
cdef const uint8_t* input_address(object buf) except NULL


cdef inline const uint8_t* buffer_address(object buf):
    """Raw pointer into a pyarrow.Buffer (NULL for a missing buffer); the caller keeps ``buf`` alive."""
    if buf is None:
        return NULL
    return <const uint8_t*><uintptr_t>buf.address


# -- splitting per-record work across two threads ------------------------------------
#
# A loop over the rows of one call runs as `n_tasks` tasks: run_tasks runs
# fn(ctx, t) once for every t in range(n_tasks) and returns when all have run.
# The calling thread takes tasks in turn with one helper thread (started on first
# use, never holding the GIL, its signals blocked); a task is taken by whichever
# thread asks first, so a helper that is late to wake costs nothing but its share.
# Each task must write only memory of its own (its rows of the outputs), so the
# result is the same whichever thread ran which task, and with one thread.
#
# Tasks run on the calling thread alone when the helper is disabled
# (parallel_config(threads=1), or one CPU available), when another call is using
# it, or when n_tasks is 1. run_tasks takes no lock the GIL waits on: it may be
# called with or without the GIL held. A fork() leaves the child without a
# helper; the next call starts one.
ctypedef void (*task_fn)(void* ctx, Py_ssize_t task) noexcept nogil

cdef void run_tasks(task_fn fn, void* ctx, Py_ssize_t n_tasks) noexcept nogil

# run_tasks for a loop over n_rows rows, called with the GIL held: it releases the
# GIL around the tasks when n_rows >= NOGIL_ROWS.
cdef void run_tasks_gil(task_fn fn, void* ctx, Py_ssize_t n_tasks, Py_ssize_t n_rows) noexcept

# Whether a loop over n rows is worth running as tasks on two threads: n is at
# least parallel_config's min_rows and the helper is enabled.
cdef bint parallel_rows(Py_ssize_t n) noexcept nogil

# How many tasks of equal size a loop over n rows is cut into: 1 unless
# parallel_rows(n), else one per 4096 rows or so (at least 2), so that a helper
# that wakes late still finds work to take.
cdef Py_ssize_t tasks_for(Py_ssize_t n) noexcept nogil

# Loops over this many rows or more release the GIL: below it, taking the GIL
# back after another Python thread got it (up to a switch interval, 5 ms)
# costs more than the loop. The same threshold as _aggregate's and _dispatch's.
cdef enum:
    NOGIL_ROWS = 1 << 16
