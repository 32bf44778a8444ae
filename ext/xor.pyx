# cython: language_level=3
"""XOR parity kernel for resilfs: ``out = XOR(sources)`` or ``out ^= XOR(sources)``.

Accepts any C-contiguous buffer (bytes, bytearray, memoryview, numpy arrays of any dtype);
lengths are in bytes. The math runs with the GIL released, one pass over memory (see
xor_kernel.h). Errors: ValueError for no sources or unequal lengths, TypeError/BufferError
for objects that are not contiguous buffers or an ``out`` that is read-only; on error
``out`` is untouched.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.mem cimport PyMem_Free, PyMem_Malloc


cdef extern from "xor_kernel.h":
    void resilfs_xor_into(unsigned char *out, unsigned char *const *src, size_t n,
                          size_t length, int accumulate) nogil


def xor_into(out, sources, bint accumulate=False, Py_ssize_t length=-1):
    """XOR the equal-length buffers ``sources`` into ``out`` (``^=`` if ``accumulate``).

    ``out`` may be one of the sources. Raises ValueError when ``sources`` is empty, any
    length differs from ``out``'s, or (``length`` >= 0) ``out`` is not ``length`` bytes.
    """
    cdef Py_buffer out_buf
    cdef Py_buffer *bufs
    cdef unsigned char **ptrs
    cdef Py_ssize_t n, i, acquired = 0
    cdef size_t nbytes
    srcs = sources if isinstance(sources, (list, tuple)) else list(sources)
    n = len(srcs)
    if n == 0 and not accumulate:
        raise ValueError("xor_into needs at least one source")
    PyObject_GetBuffer(out, &out_buf, PyBUF_SIMPLE | PyBUF_WRITABLE)
    if length >= 0 and out_buf.len != length:
        PyBuffer_Release(&out_buf)
        raise ValueError(f"out has {out_buf.len} bytes, expected {length}")
    bufs = <Py_buffer *> PyMem_Malloc((n + 1) * sizeof(Py_buffer))
    ptrs = <unsigned char **> PyMem_Malloc((n + 1) * sizeof(unsigned char *))
    try:
        if bufs == NULL or ptrs == NULL:
            raise MemoryError()
        for i in range(n):
            PyObject_GetBuffer(srcs[i], &bufs[i], PyBUF_SIMPLE)
            acquired += 1
            if bufs[i].len != out_buf.len:
                raise ValueError(
                    f"source {i} has {bufs[i].len} bytes, out has {out_buf.len}")
            ptrs[i] = <unsigned char *> bufs[i].buf
        nbytes = <size_t> out_buf.len
        with nogil:
            resilfs_xor_into(<unsigned char *> out_buf.buf, ptrs, <size_t> n, nbytes,
                             accumulate)
    finally:
        for i in range(acquired):
            PyBuffer_Release(&bufs[i])
        PyMem_Free(bufs)
        PyMem_Free(ptrs)
        PyBuffer_Release(&out_buf)
