# cython: language_level=3, cdivision=True
"""Striping geometry for resilfs: the arithmetic of resilfs.codec.twin's geometry in C.

Same functions, arguments, results and errors as the twin (``locate``, ``file_offset``,
``member_offset``, ``map_range``, ``stripes_in_range``; ``map_range`` returns twin
``Piece`` tuples). The fast path takes exact ints in 0 .. 2**62 - 1 (shapes from 1) whose
results fit in 63 bits; anything else (bad input, bools, int subclasses, bigger numbers) is
handed to the twin, which holds the only copy of the input checks and raises CodecError.
"""
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_CheckExact

from resilfs.codec import twin
from resilfs.codec.twin import Piece

cdef extern from *:
    bint mul_overflow "__builtin_mul_overflow" (long long a, long long b, long long *res) nogil
    bint add_overflow "__builtin_add_overflow" (long long a, long long b, long long *res) nogil

cdef long long LIMIT = 1LL << 62  # inputs below it: offset + length cannot overflow

cdef type _piece_type = Piece


cdef inline bint _fits(object value, long long low, long long *out):
    """True and ``*out = value`` when value is an exact int in low .. LIMIT - 1."""
    cdef int overflow = 0
    cdef long long v
    if not PyLong_CheckExact(value):
        return False
    v = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow or v < low or v >= LIMIT:
        return False
    out[0] = v
    return True


cdef inline object _piece(long long stripe, long long chunk, long long chunk_offset,
                          long long length, long long buffer_offset):
    # what Piece(...) does, minus the Python-level __new__: a tuple of Piece's type
    return tuple.__new__(_piece_type, (stripe, chunk, chunk_offset, length, buffer_offset))


def locate(offset, data_chunks, chunk_size):
    """(stripe, data chunk, offset in chunk) of striped byte ``offset``."""
    cdef long long off = 0, k = 1, cs = 1, chunk_number
    if not (_fits(data_chunks, 1, &k) and _fits(chunk_size, 1, &cs)
            and _fits(offset, 0, &off)):
        return twin.locate(offset, data_chunks, chunk_size)
    chunk_number = off // cs
    return chunk_number // k, chunk_number % k, off % cs


def file_offset(stripe, chunk, chunk_offset, data_chunks, chunk_size):
    """The striped byte offset of ``chunk_offset`` in data chunk ``chunk`` of ``stripe``."""
    cdef long long s = 0, c = 0, co = 0, k = 1, cs = 1, r = 0
    if not (_fits(data_chunks, 1, &k) and _fits(chunk_size, 1, &cs)
            and _fits(stripe, 0, &s) and _fits(chunk, 0, &c) and _fits(chunk_offset, 0, &co)
            and c < k and co < cs
            and not mul_overflow(s, k, &r) and not add_overflow(r, c, &r)
            and not mul_overflow(r, cs, &r) and not add_overflow(r, co, &r)):
        return twin.file_offset(stripe, chunk, chunk_offset, data_chunks, chunk_size)
    return r


def member_offset(stripe, chunk_offset, chunk_size):
    """Where ``chunk_offset`` of any chunk of ``stripe`` lies in its member's region."""
    cdef long long s = 0, co = 0, cs = 1, r = 0
    if not (_fits(chunk_size, 1, &cs) and _fits(stripe, 0, &s) and _fits(chunk_offset, 0, &co)
            and co < cs and not mul_overflow(s, cs, &r) and not add_overflow(r, co, &r)):
        return twin.member_offset(stripe, chunk_offset, chunk_size)
    return r


def map_range(offset, length, data_chunks, chunk_size):
    """The pieces, in file order, that bytes ``offset .. offset+length`` occupy.

    Each piece stays within one chunk; their lengths sum to ``length`` (no pieces for 0).
    """
    cdef long long off = 0, n = 0, k = 1, cs = 1, chunk_number, in_chunk, done = 0, run
    if not (_fits(data_chunks, 1, &k) and _fits(chunk_size, 1, &cs)
            and _fits(offset, 0, &off) and _fits(length, 0, &n)):
        return twin.map_range(offset, length, data_chunks, chunk_size)
    pieces = []
    chunk_number = off // cs
    in_chunk = off % cs
    while done < n:
        run = cs - in_chunk
        if run > n - done:
            run = n - done
        pieces.append(_piece(chunk_number // k, chunk_number % k, in_chunk, run, done))
        done += run
        chunk_number += 1
        in_chunk = 0
    return pieces


def stripes_in_range(offset, length, data_chunks, chunk_size):
    """The stripes that bytes ``offset .. offset+length`` touch (empty for length 0)."""
    cdef long long off = 0, n = 0, k = 1, cs = 1, stripe_size = 1
    if not (_fits(data_chunks, 1, &k) and _fits(chunk_size, 1, &cs)
            and _fits(offset, 0, &off) and _fits(length, 0, &n)
            and not mul_overflow(k, cs, &stripe_size)):
        return twin.stripes_in_range(offset, length, data_chunks, chunk_size)
    if n == 0:
        return range(0)
    return range(off // stripe_size, (off + n - 1) // stripe_size + 1)
