"""Checking and viewing the buffers handed to codecs: every failure is a CodecError."""
from collections.abc import Sequence

from .base import CodecError


def as_bytes(buf, what: str, size: int | None = None, writable: bool = False) -> memoryview:
    """A flat unsigned-byte memoryview of ``buf`` (no copy).

    Raises CodecError when ``buf`` is not a C-contiguous buffer, is read-only although
    ``writable`` is asked, or (with ``size``) does not hold exactly ``size`` bytes.
    """
    try:
        view = memoryview(buf)
    except TypeError:
        raise CodecError(f"{what} is not a buffer (got {type(buf).__name__})") from None
    if not view.c_contiguous:
        raise CodecError(f"{what} is not a contiguous buffer")
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    if size is not None and view.nbytes != size:
        raise CodecError(f"{what} has {view.nbytes} bytes, expected {size}")
    if writable and view.readonly:
        raise CodecError(f"{what} is read-only")
    return view


def flat(buf) -> memoryview:
    """A flat unsigned-byte view of a buffer already known to be contiguous."""
    view = memoryview(buf)
    return view if view.ndim == 1 and view.format == "B" else view.cast("B")


def as_chunks(bufs: Sequence, count: int, size: int, what: str,
              writable: bool = False) -> list[memoryview]:
    """Views of exactly ``count`` buffers of ``size`` bytes each; CodecError otherwise."""
    if isinstance(bufs, (str, bytes, bytearray, memoryview)) or not isinstance(bufs, Sequence):
        raise CodecError(f"{what} must be a sequence of {count} buffers")
    if len(bufs) != count:
        raise CodecError(f"expected {count} {what} chunks, got {len(bufs)}")
    return [as_bytes(b, f"{what} chunk {i}", size, writable) for i, b in enumerate(bufs)]


def same_length(bufs: Sequence, what: str, writable_from: int | None = None) -> list[memoryview]:
    """Views of buffers that must all have the same length (writable from ``writable_from``)."""
    views = [as_bytes(b, f"{what} {i}", writable=writable_from is not None and i >= writable_from)
             for i, b in enumerate(bufs)]
    for i, view in enumerate(views):
        if view.nbytes != views[0].nbytes:
            raise CodecError(f"{what} {i} has {view.nbytes} bytes, {what} 0 has "
                             f"{views[0].nbytes}: update ranges must have equal lengths")
    return views
