"""The compiled codec kernels, or their pure-Python twins where an extension is not built.

``xor_into`` comes from ``resilfs._xor`` (twin fallback, logged once). The GF(2^8) helpers
come from ``resilfs._isal`` when ISA-L is present, else from the twin: both compute the same
bytes (same field), so callers need not care which one runs. (The copy kernel is not a
codec: it is ``resilfs.copy``.)
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
    from .. import _isal
except ImportError:
    _isal = None

HAVE_XOR_EXT = _xor is not None
HAVE_ISAL = _isal is not None

xor_into = _xor.xor_into if HAVE_XOR_EXT else twin.xor_into
gf_mul = _isal.gf_mul if HAVE_ISAL else twin.gf_mul
gf_mad = _isal.gf_mad if HAVE_ISAL else twin.gf_mad

