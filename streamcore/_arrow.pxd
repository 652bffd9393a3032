from libc.stdint cimport uint8_t, uintptr_t


cdef inline const uint8_t* buffer_address(object buf):
    """Raw pointer into a pyarrow.Buffer (NULL for a missing buffer); the caller keeps ``buf`` alive."""
    if buf is None:
        return NULL
    return <const uint8_t*><uintptr_t>buf.address
