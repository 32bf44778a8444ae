# cython: language_level=3
"""Thin binding to Intel ISA-L's erasure-code functions (GF(2^8), polynomial 0x11d).

Matrices are ``bytes`` in row-major order. Buffers are any C-contiguous buffer; lengths are
in bytes and must fit in a C int. The math runs with the GIL released. Errors: ValueError
for wrong counts, unequal lengths or a singular matrix; TypeError/BufferError for objects
that are not contiguous (writable, for outputs) buffers. On error no output is touched.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.pycapsule cimport PyCapsule_GetContext, PyCapsule_New, PyCapsule_SetContext
from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject


cdef extern from "isa-l/erasure_code.h" nogil:
    void ec_init_tables(int k, int rows, unsigned char *a, unsigned char *gftbls)
    void ec_encode_data(int len, int k, int rows, unsigned char *gftbls,
                        unsigned char **data, unsigned char **coding)
    void ec_encode_data_update(int len, int k, int rows, int vec_i, unsigned char *gftbls,
                               unsigned char *data, unsigned char **coding)
    unsigned char c_gf_mul "gf_mul"(unsigned char a, unsigned char b)
    unsigned char c_gf_inv "gf_inv"(unsigned char a)
    void gf_gen_cauchy1_matrix(unsigned char *a, int m, int k)
    int gf_invert_matrix(unsigned char *inp, unsigned char *out, const int n)


cdef extern from "lane_kernel.h" nogil:
    ctypedef void (*resilfs_kernel_fn)(int len, int k, int rows, unsigned char *tables,
                                      unsigned char **sources, unsigned char **outputs)
    ctypedef struct resilfs_kernel_t:
        resilfs_kernel_fn fn
        unsigned char *tables
        int k
        int rows
    const char *RESILFS_KERNEL_CAPSULE


cdef int MAX_LEN = 0x7fffffff


cdef void _release_owner(object capsule) noexcept:
    """Capsule destructor: drop the reference to the Tables the kernel points into."""
    cdef void *owner = PyCapsule_GetContext(capsule)
    if owner != NULL:
        Py_DECREF(<object> owner)


cdef class _Buffers:
    """Acquired buffers of one call: pointers for C, released on ``release()``."""
    cdef Py_buffer *bufs
    cdef unsigned char **ptrs
    cdef Py_ssize_t count, acquired, length

    def __cinit__(self, objects, Py_ssize_t expected, Py_ssize_t length, bint writable,
                  str what):
        cdef Py_ssize_t i
        cdef int flags = PyBUF_SIMPLE | (PyBUF_WRITABLE if writable else 0)
        objs = objects if isinstance(objects, (list, tuple)) else list(objects)
        self.count = len(objs)
        if self.count != expected:
            raise ValueError(f"expected {expected} {what} buffers, got {self.count}")
        self.bufs = <Py_buffer *> PyMem_Malloc((self.count + 1) * sizeof(Py_buffer))
        self.ptrs = <unsigned char **> PyMem_Malloc((self.count + 1) * sizeof(unsigned char *))
        if self.bufs == NULL or self.ptrs == NULL:
            raise MemoryError()
        self.length = length
        for i in range(self.count):
            PyObject_GetBuffer(objs[i], &self.bufs[i], flags)
            self.acquired += 1
            if self.length < 0:
                self.length = self.bufs[i].len
            if self.bufs[i].len != self.length:
                raise ValueError(f"{what} buffer {i} has {self.bufs[i].len} bytes, "
                                 f"expected {self.length}")
            self.ptrs[i] = <unsigned char *> self.bufs[i].buf
        if self.length > MAX_LEN:
            raise ValueError(f"buffers of {self.length} bytes are too long for ISA-L")

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self.acquired):
            PyBuffer_Release(&self.bufs[i])
        PyMem_Free(self.bufs)
        PyMem_Free(self.ptrs)


def gf_mul(int a, int b):
    """Product of two GF(2^8) elements (0..255) in ISA-L's field."""
    _check_element(a)
    _check_element(b)
    return c_gf_mul(<unsigned char> a, <unsigned char> b)


def gf_inv(int a):
    """Inverse of a non-zero GF(2^8) element; ValueError for 0."""
    _check_element(a)
    if a == 0:
        raise ValueError("0 has no inverse in GF(2^8)")
    return c_gf_inv(<unsigned char> a)


cdef _check_element(int a):
    if a < 0 or a > 255:
        raise ValueError(f"{a} is not a GF(2^8) element (0..255)")


def cauchy_matrix(int total, int k):
    """The ``total`` x ``k`` systematic Cauchy matrix: identity rows, then coding rows."""
    if k < 1 or total < k or total > 256:
        raise ValueError(f"no Cauchy matrix for {total} rows of {k} columns")
    out = bytearray(total * k)
    cdef unsigned char *p = out
    gf_gen_cauchy1_matrix(p, total, k)
    return bytes(out)


def invert_matrix(matrix, int n):
    """Inverse of the ``n`` x ``n`` matrix ``matrix``; ValueError if it is singular."""
    if n < 1 or len(matrix) != n * n:
        raise ValueError(f"expected {n * n} matrix bytes, got {len(matrix)}")
    work = bytearray(matrix)
    out = bytearray(n * n)
    cdef unsigned char *w = work
    cdef unsigned char *o = out
    if gf_invert_matrix(w, o, n) != 0:
        raise ValueError("matrix is singular")
    return bytes(out)


def gf_mad(target, int coef, delta):
    """``target ^= coef * delta`` byte by byte in GF(2^8) (gf_vect_mad).

    ``target`` is writable; ``delta`` has the same length. A coefficient of 0 changes nothing.
    """
    cdef unsigned char c
    cdef unsigned char tables[32]
    _check_element(coef)
    c = <unsigned char> coef
    targets = _Buffers([target], 1, -1, True, "target")
    deltas = _Buffers([delta], 1, targets.length, False, "delta")
    if targets.length == 0 or c == 0:
        return
    ec_init_tables(1, 1, &c, tables)
    with nogil:
        ec_encode_data_update(<int> targets.length, 1, 1, 0, tables, deltas.ptrs[0],
                              targets.ptrs)


cdef class Tables:
    """Expanded ISA-L tables for a ``rows`` x ``k`` coefficient matrix.

    ``encode`` computes ``outputs[r] = sum_i coef[r][i] * sources[i]``; ``update`` adds the
    contribution of one source to ``outputs`` in place.
    """
    cdef readonly int k, rows
    cdef bytes _tables
    cdef resilfs_kernel_t _kernel

    def __init__(self, int k, int rows, coefficients):
        if k < 1 or rows < 1 or k > 255 or rows > 255:
            raise ValueError(f"bad table shape {rows} x {k}")
        coef = bytes(coefficients)
        if len(coef) != k * rows:
            raise ValueError(f"expected {k * rows} coefficients, got {len(coef)}")
        tables = bytearray(32 * k * rows)
        cdef unsigned char *t = tables
        cdef unsigned char *a = coef
        ec_init_tables(k, rows, a, t)
        self.k = k
        self.rows = rows
        self._tables = bytes(tables)
        self._kernel.fn = ec_encode_data
        self._kernel.tables = <unsigned char *> self._tables
        self._kernel.k = k
        self._kernel.rows = rows

    @property
    def lane_kernel(self):
        """This matrix as a kernel for ``resilfs._copy.copy_parallel``'s helper thread: a
        capsule (see ext/lane_kernel.h) that keeps these tables alive while it exists."""
        capsule = PyCapsule_New(&self._kernel, RESILFS_KERNEL_CAPSULE, _release_owner)
        Py_INCREF(self)
        PyCapsule_SetContext(capsule, <void *> self)
        return capsule

    def encode(self, sources, outputs, Py_ssize_t length=-1):
        """Write ``rows`` outputs from ``k`` equal-length sources (of ``length`` bytes if >= 0)."""
        srcs = _Buffers(sources, self.k, length, False, "source")
        outs = _Buffers(outputs, self.rows, srcs.length, True, "output")
        cdef unsigned char *t = self._tables
        if srcs.length == 0:
            return
        with nogil:
            ec_encode_data(<int> srcs.length, self.k, self.rows, t, srcs.ptrs, outs.ptrs)

    def update(self, int index, source, outputs):
        """Add ``coef[r][index] * source`` into each of the ``rows`` outputs."""
        if index < 0 or index >= self.k:
            raise ValueError(f"source index {index} outside 0..{self.k - 1}")
        srcs = _Buffers([source], 1, -1, False, "source")
        outs = _Buffers(outputs, self.rows, srcs.length, True, "output")
        cdef unsigned char *t = self._tables
        if srcs.length == 0:
            return
        with nogil:
            ec_encode_data_update(<int> srcs.length, self.k, self.rows, index, t,
                                  srcs.ptrs[0], outs.ptrs)
