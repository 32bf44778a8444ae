"""The compiled kernels, or their pure-Python twins where an extension is not built.

``copy_into`` / ``copy_parallel`` come from ``resilfs._copy`` (GIL-free memcpy and matrix
products shared with a helper thread; plain memoryview copies and ``tables.encode`` calls
where it is not built). ``xor_into`` comes from ``resilfs._xor`` (twin
fallback, logged once). The GF(2^8) helpers come from ``resilfs._isal`` when ISA-L is
present, else from the twin: both compute the same bytes (same field), so callers need not
care which one runs.
"""
import logging

from . import twin

log = logging.getLogger(__name__)

try:
    from .. import _xor
except ImportError:
    _xor = None
    log.warning("resilfs._xor is not built: XOR parity uses the slow pure-Python twin")

try:
    from .. import _copy
except ImportError:
    _copy = None
    log.warning("resilfs._copy is not built: large copies hold the GIL")

try:
    from .. import _isal
except ImportError:
    _isal = None

HAVE_XOR_EXT = _xor is not None
HAVE_ISAL = _isal is not None

HAVE_COPY_EXT = _copy is not None

xor_into = _xor.xor_into if HAVE_XOR_EXT else twin.xor_into
gf_mul = _isal.gf_mul if HAVE_ISAL else twin.gf_mul
gf_mad = _isal.gf_mad if HAVE_ISAL else twin.gf_mad


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


# copy_into(dst, src): memcpy with the GIL released. copy_parallel(pairs, then=None,
# products=()): copy every (dst, src) pair and compute every (tables, sources, outputs)
# product, sharing pieces with a helper thread, after calling then().
copy_into = _copy.copy_into if HAVE_COPY_EXT else _copy_into
copy_parallel = _copy.copy_parallel if HAVE_COPY_EXT else _copy_parallel
# lane_statistics(): pieces offered to copy_parallel's helper thread, run by it, and how
# often it was late (then the caller works alone for a while)
lane_statistics = _copy.lane_statistics if HAVE_COPY_EXT else _lane_statistics
