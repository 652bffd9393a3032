from libc.stdint cimport uint8_t, uintptr_t


# An input buffer's address for native reads: never NULL (a missing or empty buffer
# points at a zero byte); a buffer outside CPU memory raises InvalidRecordsError.
cdef const uint8_t* input_address(object buf) except NULL


cdef inline const uint8_t* buffer_address(object buf):
    """Raw pointer into a pyarrow.Buffer (NULL for a missing buffer); the caller keeps ``buf`` alive."""
    if buf is None:
        return NULL
    return <const uint8_t*><uintptr_t>buf.address
