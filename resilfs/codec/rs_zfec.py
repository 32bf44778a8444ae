"""ec:K+M with zfec: the portable Reed-Solomon backend (its coding bytes differ from isal's).

zfec numbers blocks like resilfs (0..K-1 data, K..K+M-1 coding) but allocates its outputs,
so ``encode(out=...)`` and decode copy into the caller's buffers. A lost coding chunk is
rebuilt by decoding the data chunks and re-encoding that chunk.
"""
import zfec

from .kernels import gf_mad
from .mds import MdsCodec


class ZfecCodec(MdsCodec):
    """Reed-Solomon over zfec.

    The update is computed from the delta, not by re-encoding: zfec's code is linear over
    GF(2^8) with the same polynomial as ISA-L, so its coefficients are read once (by encoding
    unit vectors) and each coding chunk gets coef * old ^ coef * new via ``gf_mad``.
    """

    backend = "zfec"

    def __init__(self, scheme, chunk_size: int):
        super().__init__(scheme, chunk_size)
        k, m = self.data_chunks, self.coding_chunks
        self._coding_numbers = list(range(k, k + m))
        self._encoder = zfec.Encoder(k, k + m)
        self._decoder = zfec.Decoder(k, k + m)
        units = [self._encoder.encode([bytes([i == j]) for j in range(k)], self._coding_numbers)
                 for i in range(k)]
        self.coding_matrix = tuple(tuple(units[i][j][0] for i in range(k)) for j in range(m))

    def _encode(self, data, out):
        for dest, block in zip(out, self._encoder.encode(data, self._coding_numbers), strict=True):
            dest[:] = block

    def _reconstruct(self, chosen, missing, sources, out):
        k = self.data_chunks
        data = self._decoder.decode(sources, list(chosen)) if chosen[-1] >= k else sources
        coding = [i for i in missing if i >= k]
        blocks = {}
        if coding:
            blocks = dict(zip(coding, self._encoder.encode(data, coding), strict=True))
        result = []
        for i, buf in zip(missing, out, strict=True):
            block = data[i] if i < k else blocks[i]
            if buf is None:
                result.append(memoryview(block))
            else:
                buf[:] = block
                result.append(buf)
        return result

    def _update(self, index, old, new, coding):
        for j, dest in enumerate(coding):
            coef = self.coding_matrix[j][index]
            gf_mad(dest, coef, old)
            gf_mad(dest, coef, new)
