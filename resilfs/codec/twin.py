"""Pure-Python twins of the extensions in ext/: the test oracle, and the fallback when an
extension is not built.

Same functions, same arguments, same results byte for byte, same errors (ValueError for
wrong counts or lengths, TypeError/BufferError for non-buffers or a read-only output) as
``resilfs._xor`` and the field and matrix helpers of ``resilfs._isal``. The field is
GF(2^8) with polynomial 0x11d, the one ISA-L and zfec both use. Slow: meant for tests,
small updates and fallback.

The striping geometry (``Piece``, ``locate``, ``file_offset``, ``member_offset``,
``map_range``, ``stripes_in_range``) is the twin of ``resilfs._stripe`` and the one place
its input checks live: it raises CodecError, and the extension hands any input off its fast
path (not an exact int, negative, 2**62 or more, or an overflowing result) to these
functions, so both raise the same errors with the same messages.
"""
from typing import NamedTuple

import numpy as np

from .base import CodecError

POLYNOMIAL = 0x11D


def _field_tables() -> tuple[list[int], list[int]]:
    exp = [0] * 512
    log = [0] * 256
    x = 1
    for power in range(255):
        exp[power] = x
        log[x] = power
        x <<= 1
        if x & 0x100:
            x ^= POLYNOMIAL
    for power in range(255, 512):
        exp[power] = exp[power - 255]
    return exp, log


_EXP, _LOG = _field_tables()


def _check_element(a: int) -> None:
    if not 0 <= a <= 255:
        raise ValueError(f"{a} is not a GF(2^8) element (0..255)")


def gf_mul(a: int, b: int) -> int:
    """Product of two GF(2^8) elements (0..255)."""
    _check_element(a)
    _check_element(b)
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def gf_inv(a: int) -> int:
    """Inverse of a non-zero GF(2^8) element; ValueError for 0."""
    _check_element(a)
    if a == 0:
        raise ValueError("0 has no inverse in GF(2^8)")
    return _EXP[255 - _LOG[a]]


#: MUL_TABLE[a][b] == gf_mul(a, b), as a 256 x 256 numpy array for vectorised lookups.
MUL_TABLE = np.array([[gf_mul(a, b) for b in range(256)] for a in range(256)], dtype=np.uint8)


def _bytes_view(buf, writable: bool = False) -> memoryview:
    view = memoryview(buf)
    if not view.c_contiguous:
        raise BufferError("buffer is not C-contiguous")
    if writable and view.readonly:
        raise BufferError("Object is not writable.")
    return view.cast("B") if (view.format != "B" or view.ndim != 1) else view


def xor_into(out, sources, accumulate: bool = False, length: int = -1) -> None:
    """``out = XOR(sources)`` (``out ^= XOR(sources)`` if ``accumulate``); see resilfs._xor."""
    sources = list(sources)
    if not sources and not accumulate:
        raise ValueError("xor_into needs at least one source")
    target = _bytes_view(out, writable=True)
    if length >= 0 and target.nbytes != length:
        raise ValueError(f"out has {target.nbytes} bytes, expected {length}")
    views = [_bytes_view(s) for s in sources]
    for i, view in enumerate(views):
        if view.nbytes != target.nbytes:
            raise ValueError(f"source {i} has {view.nbytes} bytes, out has {target.nbytes}")
    acc = int.from_bytes(target, "little") if accumulate else 0
    for view in views:
        acc ^= int.from_bytes(view, "little")
    target[:] = acc.to_bytes(target.nbytes, "little")


def gf_mad(target, coef: int, delta) -> None:
    """``target ^= coef * delta`` byte by byte in GF(2^8); see resilfs._isal.gf_mad."""
    _check_element(coef)
    out = _bytes_view(target, writable=True)
    src = _bytes_view(delta)
    if src.nbytes != out.nbytes:
        raise ValueError(f"delta has {src.nbytes} bytes, target has {out.nbytes}")
    if coef == 0 or out.nbytes == 0:
        return
    arr = np.frombuffer(out, dtype=np.uint8)
    arr ^= MUL_TABLE[coef][np.frombuffer(src, dtype=np.uint8)]


def cauchy_matrix(total: int, k: int) -> bytes:
    """ISA-L's gf_gen_cauchy1_matrix: k identity rows, then rows 1 / (i ^ j)."""
    if k < 1 or total < k or total > 256:
        raise ValueError(f"no Cauchy matrix for {total} rows of {k} columns")
    rows = []
    for i in range(total):
        if i < k:
            rows.extend(1 if j == i else 0 for j in range(k))
        else:
            rows.extend(gf_inv(i ^ j) for j in range(k))
    return bytes(rows)


def invert_matrix(matrix, n: int) -> bytes:
    """Inverse of the ``n`` x ``n`` matrix (Gauss-Jordan); ValueError if it is singular."""
    if n < 1 or len(matrix) != n * n:
        raise ValueError(f"expected {n * n} matrix bytes, got {len(matrix)}")
    a = [list(matrix[r * n:(r + 1) * n]) for r in range(n)]
    inv = [[1 if c == r else 0 for c in range(n)] for r in range(n)]
    for col in range(n):
        pivot = next((r for r in range(col, n) if a[r][col]), None)
        if pivot is None:
            raise ValueError("matrix is singular")
        a[col], a[pivot] = a[pivot], a[col]
        inv[col], inv[pivot] = inv[pivot], inv[col]
        scale = gf_inv(a[col][col])
        a[col] = [gf_mul(scale, v) for v in a[col]]
        inv[col] = [gf_mul(scale, v) for v in inv[col]]
        for r in range(n):
            factor = a[r][col]
            if r != col and factor:
                a[r] = [v ^ gf_mul(factor, p) for v, p in zip(a[r], a[col], strict=True)]
                inv[r] = [v ^ gf_mul(factor, p) for v, p in zip(inv[r], inv[col], strict=True)]
    return bytes(v for row in inv for v in row)


class Tables:
    """Twin of resilfs._isal.Tables: apply a ``rows`` x ``k`` coefficient matrix."""

    def __init__(self, k: int, rows: int, coefficients):
        if not (1 <= k <= 255 and 1 <= rows <= 255):
            raise ValueError(f"bad table shape {rows} x {k}")
        coef = bytes(coefficients)
        if len(coef) != k * rows:
            raise ValueError(f"expected {k * rows} coefficients, got {len(coef)}")
        self.k, self.rows, self._coef = k, rows, coef

    def _outputs(self, outputs, length: int) -> list[memoryview]:
        outs = [_bytes_view(o, writable=True) for o in outputs]
        if len(outs) != self.rows:
            raise ValueError(f"expected {self.rows} output buffers, got {len(outs)}")
        for i, out in enumerate(outs):
            if out.nbytes != length:
                raise ValueError(f"output buffer {i} has {out.nbytes} bytes, expected {length}")
        return outs

    def encode(self, sources, outputs, length: int = -1) -> None:
        """Write ``rows`` outputs from ``k`` equal-length sources (of ``length`` bytes if >= 0)."""
        srcs = [_bytes_view(s) for s in sources]
        if len(srcs) != self.k:
            raise ValueError(f"expected {self.k} source buffers, got {len(srcs)}")
        if length < 0:
            length = srcs[0].nbytes
        for i, src in enumerate(srcs):
            if src.nbytes != length:
                raise ValueError(f"source buffer {i} has {src.nbytes} bytes, expected {length}")
        outs = self._outputs(outputs, length)
        for r, out in enumerate(outs):
            acc = np.zeros(length, dtype=np.uint8)
            for i, src in enumerate(srcs):
                acc ^= MUL_TABLE[self._coef[r * self.k + i]][np.frombuffer(src, np.uint8)]
            out[:] = acc.tobytes()

    def update(self, index: int, source, outputs) -> None:
        """Add ``coef[r][index] * source`` into each of the ``rows`` outputs."""
        if not 0 <= index < self.k:
            raise ValueError(f"source index {index} outside 0..{self.k - 1}")
        src = _bytes_view(source)
        for r, out in enumerate(self._outputs(outputs, src.nbytes)):
            gf_mad(out, self._coef[r * self.k + index], src)


# Striping geometry: the twin of resilfs._stripe (see docs/codecs.md)

class Piece(NamedTuple):
    """A run of bytes within one chunk: ``length`` bytes at ``chunk_offset`` of data chunk
    ``chunk`` of ``stripe``, taken from (or put at) ``buffer_offset`` of the caller's buffer."""

    stripe: int
    chunk: int
    chunk_offset: int
    length: int
    buffer_offset: int


def check_shape(data_chunks: int, chunk_size: int) -> None:
    """CodecError unless ``data_chunks`` and ``chunk_size`` are positive ints."""
    if not isinstance(data_chunks, int) or data_chunks < 1:
        raise CodecError(f"data chunks must be a positive int, got {data_chunks!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise CodecError(f"chunk size must be a positive int, got {chunk_size!r}")


def _check_nonnegative(value: int, what: str) -> None:
    if not isinstance(value, int) or value < 0:
        raise CodecError(f"{what} must be a non-negative int, got {value!r}")


def locate(offset: int, data_chunks: int, chunk_size: int) -> tuple[int, int, int]:
    """(stripe, data chunk, offset in chunk) of striped byte ``offset``."""
    check_shape(data_chunks, chunk_size)
    _check_nonnegative(offset, "offset")
    chunk_number, in_chunk = divmod(offset, chunk_size)
    stripe, chunk = divmod(chunk_number, data_chunks)
    return stripe, chunk, in_chunk


def file_offset(stripe: int, chunk: int, chunk_offset: int, data_chunks: int,
                chunk_size: int) -> int:
    """The striped byte offset of ``chunk_offset`` in data chunk ``chunk`` of ``stripe``."""
    check_shape(data_chunks, chunk_size)
    _check_nonnegative(stripe, "stripe")
    if not (isinstance(chunk, int) and 0 <= chunk < data_chunks):
        raise CodecError(f"{chunk!r} is not a data chunk number (0..{data_chunks - 1})")
    if not (isinstance(chunk_offset, int) and 0 <= chunk_offset < chunk_size):
        raise CodecError(f"offset in chunk {chunk_offset!r} outside 0..{chunk_size - 1}")
    return (stripe * data_chunks + chunk) * chunk_size + chunk_offset


def member_offset(stripe: int, chunk_offset: int, chunk_size: int) -> int:
    """Where ``chunk_offset`` of any chunk of ``stripe`` lies in its member's region."""
    check_shape(1, chunk_size)
    _check_nonnegative(stripe, "stripe")
    if not (isinstance(chunk_offset, int) and 0 <= chunk_offset < chunk_size):
        raise CodecError(f"offset in chunk {chunk_offset!r} outside 0..{chunk_size - 1}")
    return stripe * chunk_size + chunk_offset


def map_range(offset: int, length: int, data_chunks: int, chunk_size: int) -> list[Piece]:
    """The pieces, in file order, that bytes ``offset .. offset+length`` occupy.

    Each piece stays within one chunk; their lengths sum to ``length`` (no pieces for 0).
    """
    check_shape(data_chunks, chunk_size)
    _check_nonnegative(offset, "offset")
    _check_nonnegative(length, "length")
    pieces = []
    chunk_number, in_chunk = divmod(offset, chunk_size)
    done = 0
    while done < length:
        run = min(chunk_size - in_chunk, length - done)
        stripe, chunk = divmod(chunk_number, data_chunks)
        pieces.append(Piece(stripe, chunk, in_chunk, run, done))
        done += run
        chunk_number += 1
        in_chunk = 0
    return pieces


def stripes_in_range(offset: int, length: int, data_chunks: int, chunk_size: int) -> range:
    """The stripes that bytes ``offset .. offset+length`` touch (empty for length 0)."""
    check_shape(data_chunks, chunk_size)
    _check_nonnegative(offset, "offset")
    _check_nonnegative(length, "length")
    if length == 0:
        return range(0)
    stripe_size = data_chunks * chunk_size
    return range(offset // stripe_size, (offset + length - 1) // stripe_size + 1)
