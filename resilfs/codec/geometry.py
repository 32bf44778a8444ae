"""Striping geometry as pure functions: where each byte of a striped range lives.

A stripe holds K data chunks of ``chunk_size`` bytes. File byte ``x`` lies in stripe
``x // (K * chunk_size)``, data chunk ``(x // chunk_size) % K``, at ``x % chunk_size`` in
that chunk; chunk ``c`` of stripe ``s`` is stored by member ``c`` at member offset
``s * chunk_size + offset_in_chunk`` (coding chunks K.. likewise by members K..). For
mirror:N, K=1. Every function raises CodecError for negative or out-of-range input.

``locate``, ``file_offset``, ``member_offset``, ``map_range`` and ``stripes_in_range`` come
from ``resilfs._stripe`` when it is built, else from their pure-Python twins in
``resilfs.codec.twin`` (same results and errors; the twin holds the input checks).
"""
import logging

from . import twin
from .buffers import as_bytes
from .twin import Piece

log = logging.getLogger(__name__)

try:
    from .. import _stripe
except ImportError:
    _stripe = None
    log.warning("resilfs._stripe is not built: striping geometry uses the pure-Python twin")

HAVE_STRIPE_EXT = _stripe is not None
_impl = _stripe if HAVE_STRIPE_EXT else twin

locate = _impl.locate
file_offset = _impl.file_offset
member_offset = _impl.member_offset
map_range = _impl.map_range
stripes_in_range = _impl.stripes_in_range

__all__ = ["HAVE_STRIPE_EXT", "Piece", "file_offset", "locate", "map_range", "member_offset",
           "split_chunks", "stripes_in_range"]


def split_chunks(buffer, count: int, chunk_size: int) -> list[memoryview]:
    """``count`` consecutive views of ``chunk_size`` bytes over ``buffer`` (no copy).

    Raises CodecError unless ``buffer`` is a contiguous buffer of exactly
    ``count * chunk_size`` bytes. The views are writable when ``buffer`` is.
    """
    twin.check_shape(count, chunk_size)
    view = as_bytes(buffer, "stripe buffer", count * chunk_size)
    return [view[i * chunk_size:(i + 1) * chunk_size] for i in range(count)]
