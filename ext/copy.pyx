# cython: language_level=3
"""GIL-free memory copies and matrix products for resilfs: ``copy_into``, ``copy_parallel``.

The shm transport copies through these so a copy never holds the GIL, and the resiliency
sets hand the member copies (and the encodes or decodes) of one step to ``copy_parallel``,
which runs a share of them on a helper thread (copy_lane.h) while this thread does the rest
(and, optionally, a callable such as an encode that releases the GIL itself): two vCPUs at
once.

Buffers are any C-contiguous buffer; destinations must be writable. Errors: ValueError for
pairs of unequal length or products of wrong shape, TypeError/BufferError for objects that
are not contiguous (writable) buffers; on such an error nothing is copied or computed. An
exception raised by ``then`` propagates after the helper finished its share (the buffers
stay valid until then).
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_IsValid
from libc.string cimport memcpy


cdef extern from "lane_kernel.h" nogil:
    ctypedef struct resilfs_kernel_t:
        int k
        int rows
    const char *RESILFS_KERNEL_CAPSULE


cdef extern from "copy_lane.h" nogil:
    ctypedef struct resilfs_product_t:
        const resilfs_kernel_t *kernel
        unsigned char **sources
        unsigned char **outputs
    ctypedef struct resilfs_job_t:
        unsigned char *dst
        const unsigned char *src
        size_t n
        const resilfs_product_t *product
        size_t offset
    int resilfs_lane_try_acquire()
    void resilfs_lane_release()
    void resilfs_lane_post(const resilfs_job_t *jobs, size_t n)
    void resilfs_lane_finish()
    void resilfs_copy_all(const resilfs_job_t *jobs, size_t n)
    void resilfs_lane_statistics(size_t *posted, size_t *helped, size_t *late)
    long resilfs_now_ns()


PARALLEL_MIN = 256 * 1024  # below this many bytes a helper thread costs more than it saves
PIECE = 128 * 1024  # bytes of a copy, or of each output of a product, claimed at a time
BIG = 2 * 1024 * 1024  # calls of at least this many bytes are timed apart from smaller ones
cdef enum:
    EXPLORE_MIN = 8  # an adaptive call in this many at least tries the way that lost
    EXPLORE_MAX = 256  # ... and at most in this many, while that way keeps losing
cdef double ALONE_MARGIN = 1.25  # alone must be this much faster than helped to be chosen

# Adaptive choice between the helper and this thread alone. Whether a second lane pays
# depends on the other vCPU and on the work: idle, it nearly halves a decode or a read
# from memory; busy with another process, the helper is descheduled mid-piece or
# competes with this thread, and the call runs slower than alone. So each kind of call
# (the caller's label, and whether it moves BIG bytes or more) keeps a moving average of
# nanoseconds per byte for both ways and runs the helper unless alone was clearly faster;
# now and then it tries the other way, to notice when the load changes: every
# EXPLORE_MIN calls at first, half as often each time the other way loses again.
cdef class _Choice:
    """The adaptive state of one kind of call."""
    cdef double ns_per_byte[2]  # [0: alone, 1: with the helper]; 0: not measured yet
    cdef unsigned long calls, explore_every

    def __cinit__(self):
        self.explore_every = EXPLORE_MIN

    cdef int better(self) noexcept:
        """The helper unless alone has been clearly faster (by ALONE_MARGIN: measurements
        are noisy, and flipping back and forth makes throughput erratic)."""
        return 0 if self.ns_per_byte[0] * ALONE_MARGIN < self.ns_per_byte[1] else 1

    cdef int choose(self) noexcept:
        """1 to offer the work to the helper, 0 to run it alone. The helper until measured
        otherwise (a late one turns itself off anyway, see copy_lane.h)."""
        self.calls += 1
        if self.ns_per_byte[1] == 0:
            return 1
        if self.ns_per_byte[0] == 0:
            return 0 if self.calls % EXPLORE_MIN == 0 else 1
        if self.calls % self.explore_every == 0:
            return 1 - self.better()
        return self.better()

    cdef void learn(self, int mode, long ns, Py_ssize_t nbytes) noexcept:
        cdef double rate = <double> ns / <double> nbytes
        cdef double old = self.ns_per_byte[mode]
        cdef bint explored = self.ns_per_byte[1 - mode] != 0 and mode != self.better()
        if old != 0 and rate > 2 * old:  # one call descheduled midway says little
            rate = 2 * old
        self.ns_per_byte[mode] = rate if old == 0 else 0.75 * old + 0.25 * rate
        if explored:  # the other way was tried: did it win this time?
            if mode == self.better():
                self.explore_every = EXPLORE_MIN
            elif self.explore_every < EXPLORE_MAX:
                self.explore_every *= 2


_choices: dict = {}  # (label, big) -> _Choice


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


cdef class _Work:
    """The acquired buffers and the job list of one ``copy_parallel`` call."""
    cdef Py_buffer *bufs
    cdef Py_ssize_t nbufs, acquired
    cdef unsigned char **ptrs
    cdef Py_ssize_t nptrs, used_ptrs
    cdef resilfs_product_t *products
    cdef Py_ssize_t nproducts
    cdef resilfs_job_t *jobs
    cdef Py_ssize_t njobs
    cdef readonly Py_ssize_t total

    def __cinit__(self, Py_ssize_t nbufs, Py_ssize_t nproducts):
        self.nbufs = nbufs
        self.nptrs = nbufs
        self.nproducts = nproducts
        self.bufs = <Py_buffer *> PyMem_Malloc((nbufs + 1) * sizeof(Py_buffer))
        self.ptrs = <unsigned char **> PyMem_Malloc((nbufs + 1) * sizeof(unsigned char *))
        self.products = <resilfs_product_t *> PyMem_Malloc(
            (nproducts + 1) * sizeof(resilfs_product_t))
        if self.bufs == NULL or self.ptrs == NULL or self.products == NULL:
            raise MemoryError()

    cdef Py_buffer *acquire(self, obj, bint writable) except NULL:
        cdef Py_buffer *b = &self.bufs[self.acquired]
        PyObject_GetBuffer(obj, b, PyBUF_SIMPLE | (PyBUF_WRITABLE if writable else 0))
        self.acquired += 1
        return b

    cdef unsigned char **pointers(self, buffers, Py_ssize_t expected, Py_ssize_t *length,
                                  bint writable, str what) except NULL:
        """Acquire ``buffers`` (``expected`` of them, ``length[0]`` bytes each, or any
        length if it is negative: then set) and return their pointers."""
        cdef Py_ssize_t i, count = len(buffers)
        cdef Py_buffer *b
        cdef unsigned char **out = &self.ptrs[self.used_ptrs]
        if count != expected:
            raise ValueError(f"copy_parallel: expected {expected} {what} buffers, got {count}")
        self.used_ptrs += count
        for i in range(count):
            b = self.acquire(buffers[i], writable)
            if length[0] < 0:
                length[0] = b.len
            elif b.len != length[0]:
                raise ValueError(f"copy_parallel: {what} buffer {i} has {b.len} bytes, "
                                 f"expected {length[0]}")
            out[i] = <unsigned char *> b.buf
        return out

    cdef plan(self, pairs, kernels, products, Py_ssize_t piece):
        """Acquire every buffer and cut the work into jobs of at most ``piece`` bytes."""
        cdef Py_ssize_t i, at, step, n, count = 0
        cdef Py_ssize_t npairs = len(pairs)
        cdef Py_ssize_t *lengths = <Py_ssize_t *> PyMem_Malloc(
            (npairs + self.nproducts + 1) * sizeof(Py_ssize_t))
        cdef Py_buffer *d
        cdef Py_buffer *s
        cdef const resilfs_kernel_t *kernel
        if lengths == NULL:
            raise MemoryError()
        try:
            for i in range(npairs):
                dst, src = pairs[i]
                d = self.acquire(dst, True)
                s = self.acquire(src, False)
                if d.len != s.len:
                    raise ValueError(f"copy_parallel: pair {i}: destination has {d.len} "
                                     f"bytes, source {s.len}")
                self.ptrs[self.used_ptrs] = <unsigned char *> d.buf
                self.ptrs[self.used_ptrs + 1] = <unsigned char *> s.buf
                self.used_ptrs += 2
                lengths[i] = d.len
                count += (d.len + piece - 1) // piece
            for i in range(self.nproducts):
                _, sources, outputs = products[i]
                kernel = <const resilfs_kernel_t *> PyCapsule_GetPointer(
                    kernels[i], RESILFS_KERNEL_CAPSULE)
                n = -1
                self.products[i].kernel = kernel
                self.products[i].sources = self.pointers(sources, kernel.k, &n, False,
                                                         "source")
                self.products[i].outputs = self.pointers(outputs, kernel.rows, &n, True,
                                                         "output")
                lengths[npairs + i] = n
                count += (n + piece - 1) // piece
            self.jobs = <resilfs_job_t *> PyMem_Malloc((count + 1) * sizeof(resilfs_job_t))
            if self.jobs == NULL:
                raise MemoryError()
            for i in range(self.nproducts):  # the heavier work first: both lanes share it
                at = 0
                while at < lengths[npairs + i]:
                    step = min(piece, lengths[npairs + i] - at)
                    self.jobs[self.njobs].product = &self.products[i]
                    self.jobs[self.njobs].offset = <size_t> at
                    self.jobs[self.njobs].n = <size_t> step
                    self.njobs += 1
                    self.total += step
                    at += step
            for i in range(npairs):
                at = 0
                while at < lengths[i]:
                    step = min(piece, lengths[i] - at)
                    self.jobs[self.njobs].product = NULL
                    self.jobs[self.njobs].dst = self.ptrs[2 * i] + at
                    self.jobs[self.njobs].src = self.ptrs[2 * i + 1] + at
                    self.jobs[self.njobs].n = <size_t> step
                    self.njobs += 1
                    self.total += step
                    at += step
        finally:
            PyMem_Free(lengths)

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self.acquired):
            PyBuffer_Release(&self.bufs[i])
        PyMem_Free(self.bufs)
        PyMem_Free(self.ptrs)
        PyMem_Free(self.products)
        PyMem_Free(self.jobs)


def copy_parallel(pairs, then=None, Py_ssize_t min_parallel=-1, Py_ssize_t piece=-1,
                  products=(), bint adaptive=True, label=None):
    """Copy every ``(dst, src)`` pair and compute every product, sharing the work with the
    helper thread.

    A product is ``(tables, sources, outputs)``: ``tables.encode(sources, outputs)``, an
    ISA-L ``Tables`` (whose ``lane_kernel`` capsule lets the helper run it) or any object
    with that method (run on this thread first, like ``then``). Copies and products must be
    independent: none may read or write bytes another one writes.

    The work is cut into pieces of ``piece`` bytes (default PIECE; for a product, bytes of
    each output) that the helper and this thread claim in turn; this thread first calls
    ``then()`` (if given: work that releases the GIL, such as an encode), then joins in.
    Below ``min_parallel`` bytes in total (default PARALLEL_MIN), when another thread holds
    the helper, or when ``adaptive`` and calls with this ``label`` (any hashable: the same
    label for the same kind of work) have recently run faster alone (see _Choice),
    everything runs here.
    """
    cdef Py_ssize_t i, nbufs = 2 * len(pairs)
    cdef int lane = 0
    cdef _Choice choice = None
    cdef long started = 0
    if min_parallel < 0:
        min_parallel = PARALLEL_MIN
    if piece <= 0:
        piece = PIECE
    piece = min(piece, 1 << 30)  # a kernel takes an int length
    kernels, laned, others = [], [], []
    for product in products:
        tables, sources, outputs = product
        kernel = getattr(tables, "lane_kernel", None)
        if kernel is not None and PyCapsule_IsValid(kernel, RESILFS_KERNEL_CAPSULE):
            kernels.append(kernel)
            laned.append(product)
            nbufs += len(sources) + len(outputs)
        else:
            others.append(product)
    work = _Work(nbufs, len(laned))
    work.plan(pairs, kernels, laned, piece)
    for tables, sources, outputs in others:
        tables.encode(sources, outputs)
    if work.total >= min_parallel and work.njobs > 1:
        if adaptive:
            key = (label, work.total >= BIG)
            choice = _choices.get(key)
            if choice is None:
                choice = _choices[key] = _Choice()
            started = resilfs_now_ns()
        if choice is None or choice.choose():
            lane = resilfs_lane_try_acquire()
    if lane:
        resilfs_lane_post(work.jobs, <size_t> work.njobs)
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
            resilfs_copy_all(work.jobs, <size_t> work.njobs)
    if choice is not None:
        choice.learn(lane, resilfs_now_ns() - started, work.total)


def lane_statistics():
    """Counters since the process started: ``posted`` pieces offered to the helper,
    ``helped`` pieces it ran, ``late`` times it kept the caller waiting (then it is off
    for a while, see copy_lane.h); ``ns_per_byte``: the adaptive averages per kind of
    call, ``{(label, big): (alone, helped)}``, 0 where not measured."""
    cdef size_t posted, helped, late
    cdef _Choice choice
    resilfs_lane_statistics(&posted, &helped, &late)
    averages = {}
    for key, choice in _choices.items():
        averages[key] = (choice.ns_per_byte[0], choice.ns_per_byte[1])
    return {"posted": posted, "helped": helped, "late": late, "ns_per_byte": averages}
