"""mirror:N: every member holds the same bytes (K=1 data chunk, M=N-1 copies)."""
from collections.abc import Sequence

from .buffers import as_chunks
from .mds import MdsCodec


class MirrorCodec(MdsCodec):
    """N copies. Encode and decode return views of the data (no copy) unless ``out`` is given."""

    backend = "mirror"

    def __init__(self, scheme, chunk_size: int):
        super().__init__(scheme, chunk_size)
        self.coding_matrix = tuple((1,) for _ in range(self.coding_chunks))

    def encode(self, data: Sequence, out: Sequence | None = None) -> list[memoryview]:
        if out is not None:
            return super().encode(data, out)
        (view,) = as_chunks(data, 1, self.chunk_size, "data")
        return [view] * self.coding_chunks

    def _encode(self, data, out):
        for copy in out:
            copy[:] = data[0]

    def _reconstruct(self, chosen, missing, sources, out):
        result = []
        for buf in out:
            if buf is None:
                result.append(sources[0])
            else:
                buf[:] = sources[0]
                result.append(buf)
        return result

    def _update(self, index, old, new, coding):
        for copy in coding:
            copy[:] = new
