"""parity:K+1: one XOR parity chunk, computed by the ``resilfs._xor`` kernel."""
from .kernels import xor_into
from .mds import MdsCodec


class XorParityCodec(MdsCodec):
    """K data chunks and P = D0 ^ ... ^ DK-1; any one lost chunk is the XOR of the others.

    The update is the parity delta P' = P ^ D ^ D', one pass over the touched bytes.
    """

    backend = "xor"

    def __init__(self, scheme, chunk_size: int):
        super().__init__(scheme, chunk_size)
        self.coding_matrix = (tuple(1 for _ in range(self.data_chunks)),)

    def _encode_fast(self, data, out):
        if len(data) != self.data_chunks or len(out) != 1:
            raise ValueError("wrong chunk count")
        xor_into(out[0], data, length=self.chunk_size)
        return True

    def _encode(self, data, out):
        xor_into(out[0], data)

    def _reconstruct(self, chosen, missing, sources, out):
        (buf,) = out
        target = self._new_chunk() if buf is None else buf
        xor_into(target, sources)
        return [target]

    def _update(self, index, old, new, coding):
        xor_into(coding[0], (old, new), accumulate=True)
