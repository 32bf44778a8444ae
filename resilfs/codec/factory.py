"""Choosing a codec: a scheme, a chunk size and a backend name give a Codec.

The backend is part of a filesystem's format (isal and zfec write different coding bytes),
so a named backend is never silently replaced: if it is missing, BackendUnavailable.
"""
from ..scheme import Scheme
from .base import BackendUnavailable, Codec, CodecError
from .kernels import HAVE_ISAL
from .mirror import MirrorCodec
from .rs_isal import IsalCodec
from .rs_zfec import ZfecCodec
from .xor import XorParityCodec

#: backends of each scheme kind, in order of preference
BACKENDS = {"mirror": ("mirror",), "parity": ("xor",), "ec": ("isal", "zfec")}
_CLASSES = {"mirror": MirrorCodec, "xor": XorParityCodec, "isal": IsalCodec, "zfec": ZfecCodec}


def available_backends(kind: str | None = None) -> list[str]:
    """Backend names usable on this machine (for one scheme kind if given), preferred first."""
    kinds = BACKENDS.values() if kind is None else [BACKENDS.get(kind, ())]
    return [name for names in kinds for name in names if name != "isal" or HAVE_ISAL]


def default_backend(kind: str) -> str:
    """The backend a new filesystem of this scheme kind uses here (isal for ec if present).

    Raises CodecError for an unknown kind.
    """
    if kind not in BACKENDS:
        raise CodecError(f"unknown scheme kind {kind!r} (use {', '.join(BACKENDS)})")
    return available_backends(kind)[0]


def make_codec(scheme: Scheme | str, chunk_size: int, backend: str | None = None) -> Codec:
    """A codec for ``scheme`` (a Scheme or a scheme string) with chunks of ``chunk_size``.

    ``backend`` None picks ``default_backend``. Raises InvalidScheme for a bad scheme
    string, CodecError for a bad chunk size or a backend that does not implement the
    scheme's kind, and BackendUnavailable for a backend unknown or not built here.
    """
    if not isinstance(scheme, Scheme):
        scheme = Scheme.parse(scheme)
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool):
        raise CodecError(f"chunk size must be an int, got {chunk_size!r}")
    if backend is None:
        backend = default_backend(scheme.kind)
    if backend not in _CLASSES:
        raise BackendUnavailable(
            f"unknown codec backend {backend!r}; this resilfs knows {', '.join(_CLASSES)}")
    if backend not in BACKENDS[scheme.kind]:
        raise CodecError(f"backend {backend!r} does not implement {scheme.kind}; "
                         f"use {' or '.join(BACKENDS[scheme.kind])}")
    return _CLASSES[backend](scheme, chunk_size)
