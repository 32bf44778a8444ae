"""ec:K+M with Intel ISA-L (``resilfs._isal``): a systematic Cauchy Reed-Solomon code.

The encode matrix is ISA-L's ``gf_gen_cauchy1_matrix``: identity over the data chunks, then
M rows 1/(i ^ j); every K x K submatrix is invertible, so any K chunks decode. Tables are
expanded once per codec; decode tables are cached per (chunks read, chunks rebuilt).
"""
import functools
import logging

from .base import BackendUnavailable, CodecError
from .mds import MdsCodec
from .twin import MUL_TABLE

log = logging.getLogger(__name__)

try:
    from .. import _isal
except ImportError:
    _isal = None

MAX_CHUNK = 0x7FFFFFFF
DECODE_CACHE = 64
_MUL = MUL_TABLE.tobytes()  # _MUL[a * 256 + b] == a * b in GF(2^8)


class IsalCodec(MdsCodec):
    """Reed-Solomon over ISA-L. The update adds coef * (old ^ new) to each coding chunk in
    place (``ec_encode_data_update`` run on old, then on new: no temporary, no stripe read).

    Raises BackendUnavailable when ``resilfs._isal`` was not built (no libisal-dev).
    """

    backend = "isal"

    def __init__(self, scheme, chunk_size: int):
        if _isal is None:
            raise BackendUnavailable(
                "codec backend 'isal' is not available: resilfs._isal was not built "
                "(install libisal-dev and run make build)")
        super().__init__(scheme, chunk_size)
        if chunk_size > MAX_CHUNK:
            raise CodecError(f"isal chunks are at most {MAX_CHUNK} bytes, got {chunk_size}")
        k, m = self.data_chunks, self.coding_chunks
        self._matrix = _isal.cauchy_matrix(k + m, k)
        coding = self._matrix[k * k:]
        self.coding_matrix = tuple(tuple(coding[j * k:(j + 1) * k]) for j in range(m))
        self._encoder = _isal.Tables(k, m, coding)
        self._decoder = functools.lru_cache(maxsize=DECODE_CACHE)(self._decode_tables)
        self._kernels = functools.lru_cache(maxsize=DECODE_CACHE)(self._make_kernel)

    def _encode_fast(self, data, out):
        self._encoder.encode(data, out, self.chunk_size)
        return True

    def _encode(self, data, out):
        self._encoder.encode(data, out)

    def _reconstruct(self, chosen, missing, sources, out):
        outs = [self._new_chunk() if buf is None else buf for buf in out]
        self._decoder(chosen, missing).encode(sources, outs)
        return outs

    def _update(self, index, old, new, coding):
        self._encoder.update(index, old, coding)
        self._encoder.update(index, new, coding)

    def kernel(self, sources, outputs):
        """The encoder's tables for data -> coding, else decode tables (both cached)."""
        return self._kernels(tuple(sources), tuple(outputs))

    def _make_kernel(self, sources: tuple[int, ...], outputs: tuple[int, ...]):
        k = self.data_chunks
        for i in sources + outputs:
            self._check_chunk(i)
        if len(sources) != k or len(set(sources)) != k or set(sources) & set(outputs) \
                or len(set(outputs)) != len(outputs) or not outputs:
            raise CodecError(f"{self.scheme}: no kernel from chunks {list(sources)} to "
                             f"{list(outputs)} (need {k} distinct sources, other outputs)")
        if sources == tuple(range(k)) and outputs == tuple(range(k, self._width)):
            return self._encoder
        return self._decoder(sources, outputs)

    def _decode_tables(self, chosen: tuple[int, ...], missing: tuple[int, ...]):
        """Tables turning chunks ``chosen`` into chunks ``missing``: rows A[w] * inv(A[chosen])."""
        k = self.data_chunks
        rows = self._matrix
        square = b"".join(rows[c * k:(c + 1) * k] for c in chosen)
        inverse = _isal.invert_matrix(square, k)
        coef = bytearray()
        for w in missing:
            row = [rows[w * k + i] * 256 for i in range(k)]
            for col in range(k):
                acc = 0
                for i in range(k):
                    acc ^= _MUL[row[i] + inverse[i * k + col]]
                coef.append(acc)
        log.debug("%s: decode tables for %s from %s", self.scheme, missing, chosen)
        return _isal.Tables(k, len(missing), bytes(coef))
