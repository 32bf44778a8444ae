"""The copy kernel: ``resilfs._copy`` when it is built, else its pure-Python twin.

Transports copy into mapped regions with it, sets run their member copies and the codec's
matrix products (encodes, decodes) through it. It knows nothing of either: a product is
any object with ``encode(sources, outputs)`` (a codec's coding tables), which the compiled
kernel runs on its helper thread when the object offers a lane kernel, else on the calling
thread. The twin is the oracle of ``tests/unit/test_copy_twin.py`` and the fallback.

- ``copy_into(dst, src)``: memcpy with the GIL released; ValueError if the lengths differ.
- ``copy_parallel(pairs, then=None, products=(), ...)``: copy every (dst, src) pair and
  compute every (tables, sources, outputs) product, sharing pieces with a helper thread,
  after calling ``then()`` (work that releases the GIL itself, such as an encode). The
  helper has finished its share when it returns, also when ``then`` raised.
- ``lane_statistics()``: pieces offered to the helper thread, run by it, and how often it
  was late (then the caller works alone for a while).
"""
import logging

log = logging.getLogger(__name__)

try:
    from . import _copy
except ImportError:
    _copy = None
    log.warning("resilfs._copy is not built: large copies hold the GIL")

HAVE_COPY_EXT = _copy is not None


def _copy_into(dst, src) -> None:
    memoryview(dst).cast("B")[:] = memoryview(src).cast("B")


def _copy_parallel(pairs, then=None, min_parallel: int = -1, piece: int = -1,
                   products=(), adaptive: bool = True, label=None) -> None:
    for tables, sources, outputs in products:
        tables.encode(sources, outputs)
    if then is not None:
        then()
    for dst, src in pairs:
        _copy_into(dst, src)


def _lane_statistics() -> dict[str, int]:
    return {"posted": 0, "helped": 0, "late": 0, "ns_per_byte": {}}


copy_into = _copy.copy_into if HAVE_COPY_EXT else _copy_into
copy_parallel = _copy.copy_parallel if HAVE_COPY_EXT else _copy_parallel
lane_statistics = _copy.lane_statistics if HAVE_COPY_EXT else _lane_statistics
