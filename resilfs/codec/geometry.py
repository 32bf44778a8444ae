"""Striping geometry as pure functions: where each byte of a striped range lives.

A stripe holds K data chunks of ``chunk_size`` bytes. File byte ``x`` lies in stripe
``x // (K * chunk_size)``, data chunk ``(x // chunk_size) % K``, at ``x % chunk_size`` in
that chunk; chunk ``c`` of stripe ``s`` is stored by member ``c`` at member offset
``s * chunk_size + offset_in_chunk`` (coding chunks K.. likewise by members K..). For
mirror:N, K=1. Every function raises CodecError for negative or out-of-range input.
"""
from typing import NamedTuple

from .base import CodecError
from .buffers import as_bytes


class Piece(NamedTuple):
    """A run of bytes within one chunk: ``length`` bytes at ``chunk_offset`` of data chunk
    ``chunk`` of ``stripe``, taken from (or put at) ``buffer_offset`` of the caller's buffer."""

    stripe: int
    chunk: int
    chunk_offset: int
    length: int
    buffer_offset: int


def _check_shape(data_chunks: int, chunk_size: int) -> None:
    if not isinstance(data_chunks, int) or data_chunks < 1:
        raise CodecError(f"data chunks must be a positive int, got {data_chunks!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise CodecError(f"chunk size must be a positive int, got {chunk_size!r}")


def _check_nonnegative(value: int, what: str) -> None:
    if not isinstance(value, int) or value < 0:
        raise CodecError(f"{what} must be a non-negative int, got {value!r}")


def locate(offset: int, data_chunks: int, chunk_size: int) -> tuple[int, int, int]:
    """(stripe, data chunk, offset in chunk) of striped byte ``offset``."""
    _check_shape(data_chunks, chunk_size)
    _check_nonnegative(offset, "offset")
    chunk_number, in_chunk = divmod(offset, chunk_size)
    stripe, chunk = divmod(chunk_number, data_chunks)
    return stripe, chunk, in_chunk


def file_offset(stripe: int, chunk: int, chunk_offset: int, data_chunks: int,
                chunk_size: int) -> int:
    """The striped byte offset of ``chunk_offset`` in data chunk ``chunk`` of ``stripe``."""
    _check_shape(data_chunks, chunk_size)
    _check_nonnegative(stripe, "stripe")
    if not (isinstance(chunk, int) and 0 <= chunk < data_chunks):
        raise CodecError(f"{chunk!r} is not a data chunk number (0..{data_chunks - 1})")
    if not (isinstance(chunk_offset, int) and 0 <= chunk_offset < chunk_size):
        raise CodecError(f"offset in chunk {chunk_offset!r} outside 0..{chunk_size - 1}")
    return (stripe * data_chunks + chunk) * chunk_size + chunk_offset


def member_offset(stripe: int, chunk_offset: int, chunk_size: int) -> int:
    """Where ``chunk_offset`` of any chunk of ``stripe`` lies in its member's region."""
    _check_shape(1, chunk_size)
    _check_nonnegative(stripe, "stripe")
    if not (isinstance(chunk_offset, int) and 0 <= chunk_offset < chunk_size):
        raise CodecError(f"offset in chunk {chunk_offset!r} outside 0..{chunk_size - 1}")
    return stripe * chunk_size + chunk_offset


def map_range(offset: int, length: int, data_chunks: int, chunk_size: int) -> list[Piece]:
    """The pieces, in file order, that bytes ``offset .. offset+length`` occupy.

    Each piece stays within one chunk; their lengths sum to ``length`` (no pieces for 0).
    """
    _check_shape(data_chunks, chunk_size)
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
    _check_shape(data_chunks, chunk_size)
    _check_nonnegative(offset, "offset")
    _check_nonnegative(length, "length")
    if length == 0:
        return range(0)
    stripe_size = data_chunks * chunk_size
    return range(offset // stripe_size, (offset + length - 1) // stripe_size + 1)


def split_chunks(buffer, count: int, chunk_size: int) -> list[memoryview]:
    """``count`` consecutive views of ``chunk_size`` bytes over ``buffer`` (no copy).

    Raises CodecError unless ``buffer`` is a contiguous buffer of exactly
    ``count * chunk_size`` bytes. The views are writable when ``buffer`` is.
    """
    _check_shape(count, chunk_size)
    view = as_bytes(buffer, "stripe buffer", count * chunk_size)
    return [view[i * chunk_size:(i + 1) * chunk_size] for i in range(count)]
