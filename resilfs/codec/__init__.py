"""Codecs: the bytes each member of a resiliency set stores (see docs/codecs.md)."""
from .base import BackendUnavailable, Codec, CodecError, NotEnoughChunks
from .factory import available_backends, default_backend, make_codec
from .kernels import gf_mad, gf_mul, xor_into

__all__ = [
    "BackendUnavailable", "Codec", "CodecError", "NotEnoughChunks", "available_backends",
    "default_backend", "gf_mad", "gf_mul", "make_codec", "xor_into",
]
