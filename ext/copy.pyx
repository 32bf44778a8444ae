# cython: language_level=3
"""GIL-free memory copies for resilfs: ``copy_into`` and ``copy_parallel``.

The shm transport copies through these so a copy never holds the GIL, and the resiliency
sets hand the member copies of one multi-write to ``copy_parallel``, which runs a share of
them on a helper thread (copy_lane.h) while this thread does the rest (and, optionally, a
callable such as an encode that releases the GIL itself): two vCPUs at once.

Buffers are any C-contiguous buffer; destinations must be writable. Errors: ValueError for
pairs of unequal length, TypeError/BufferError for objects that are not contiguous
(writable) buffers; on such an error nothing is copied. An exception raised by ``then``
propagates after the helper finished its share (the buffers stay valid until then).
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.string cimport memcpy


cdef extern from "copy_lane.h" nogil:
    ctypedef struct resilfs_copy_t:
        unsigned char *dst
        const unsigned char *src
        size_t n
    int resilfs_lane_try_acquire()
    void resilfs_lane_release()
    void resilfs_lane_post(const resilfs_copy_t *jobs, size_t n)
    void resilfs_lane_finish()
    void resilfs_copy_all(const resilfs_copy_t *jobs, size_t n)


PARALLEL_MIN = 256 * 1024  # below this many bytes a helper thread costs more than it saves
PIECE = 128 * 1024  # bytes the two threads claim at a time


def copy_into(dst, src):
    """Copy the bytes of ``src`` into ``dst`` (same length) with the GIL released."""
    cdef Py_buffer d, s
    PyObject_GetBuffer(dst, &d, PyBUF_SIMPLE | PyBUF_WRITABLE)
    try:
        PyObject_GetBuffer(src, &s, PyBUF_SIMPLE)
    except BaseException:
        PyBuffer_Release(&d)
        raise
    try:
        if d.len != s.len:
            raise ValueError(f"copy_into: destination has {d.len} bytes, source {s.len}")
        with nogil:
            memcpy(d.buf, s.buf, <size_t> d.len)
    finally:
        PyBuffer_Release(&s)
        PyBuffer_Release(&d)


def copy_parallel(pairs, then=None, Py_ssize_t min_parallel=-1, Py_ssize_t piece=-1):
    """Copy every ``(dst, src)`` pair, sharing the bytes with the helper thread.

    The pairs are cut into pieces of ``piece`` bytes (default PIECE) that the helper and
    this thread claim in turn; this thread first calls ``then()`` (if given: work that
    releases the GIL, such as an encode), then joins in. Below ``min_parallel`` bytes in
    total (default PARALLEL_MIN), or when another thread holds the helper, everything
    runs here.
    """
    cdef Py_ssize_t n = len(pairs), i, acquired = 0, total = 0, count = 0, at, step
    cdef Py_buffer *bufs = <Py_buffer *> PyMem_Malloc((2 * n + 1) * sizeof(Py_buffer))
    cdef resilfs_copy_t *jobs = NULL
    cdef int lane = 0
    if min_parallel < 0:
        min_parallel = PARALLEL_MIN
    if piece <= 0:
        piece = PIECE
    try:
        if bufs == NULL:
            raise MemoryError()
        for i in range(n):
            dst, src = pairs[i]
            PyObject_GetBuffer(dst, &bufs[2 * i], PyBUF_SIMPLE | PyBUF_WRITABLE)
            acquired += 1
            PyObject_GetBuffer(src, &bufs[2 * i + 1], PyBUF_SIMPLE)
            acquired += 1
            if bufs[2 * i].len != bufs[2 * i + 1].len:
                raise ValueError(f"copy_parallel: pair {i}: destination has "
                                 f"{bufs[2 * i].len} bytes, source {bufs[2 * i + 1].len}")
            total += bufs[2 * i].len
            count += (bufs[2 * i].len + piece - 1) // piece
        jobs = <resilfs_copy_t *> PyMem_Malloc((count + 1) * sizeof(resilfs_copy_t))
        if jobs == NULL:
            raise MemoryError()
        count = 0
        for i in range(n):
            at = 0
            while at < bufs[2 * i].len:
                step = min(piece, bufs[2 * i].len - at)
                jobs[count].dst = (<unsigned char *> bufs[2 * i].buf) + at
                jobs[count].src = (<const unsigned char *> bufs[2 * i + 1].buf) + at
                jobs[count].n = <size_t> step
                count += 1
                at += step
        if total >= min_parallel and count > 1:
            lane = resilfs_lane_try_acquire()
        if lane:
            resilfs_lane_post(jobs, <size_t> count)
            try:
                if then is not None:
                    then()
            finally:
                with nogil:
                    resilfs_lane_finish()
                resilfs_lane_release()
        else:
            if then is not None:
                then()
            with nogil:
                resilfs_copy_all(jobs, <size_t> count)
    finally:
        for i in range(acquired):
            PyBuffer_Release(&bufs[i])
        PyMem_Free(bufs)
        PyMem_Free(jobs)
