"""What every codec here shares: input checks, chunk choice and the decode/update scaffold.

All four backends are MDS codes (any K of the K+M chunks determine the stripe), so which
chunks to read, how to check the caller's buffers and when to give up are the same; a
backend supplies only the math (``_encode``, ``_reconstruct``, ``_update``).
"""
from abc import abstractmethod
from collections.abc import Iterable, Mapping, Sequence

from .base import Codec, CodecError, NotEnoughChunks
from .buffers import as_bytes, as_chunks, flat, same_length


class MdsCodec(Codec):
    """A Codec whose stripes are determined by any K of their K+M chunks."""

    def __init__(self, scheme, chunk_size: int):
        super().__init__(scheme, chunk_size)
        self._width = scheme.width

    # -- the math, supplied by each backend; inputs are already checked views ----------

    @abstractmethod
    def _encode(self, data: list[memoryview], out: list[memoryview]) -> None:
        """Write the M coding chunks of ``data`` into ``out``."""

    @abstractmethod
    def _reconstruct(self, chosen: tuple[int, ...], missing: tuple[int, ...],
                     sources: list[memoryview], out: list[memoryview | None]) -> list[memoryview]:
        """Chunks ``missing`` from the K chunks ``chosen`` (``sources``, same order).

        ``out[i]`` is a writable buffer for ``missing[i]`` or None (allocate, or return a
        view where the chunk equals a source).
        """

    @abstractmethod
    def _update(self, index: int, old: memoryview, new: memoryview,
                coding: list[memoryview]) -> None:
        """Apply data chunk ``index`` changing from ``old`` to ``new`` to ``coding``."""

    def _encode_fast(self, data: Sequence, out: Sequence) -> bool:
        """Encode unchecked buffers into ``out`` if the backend's kernel checks every count
        and length itself, raising ValueError, TypeError or BufferError before it writes;
        return False (doing nothing) if the backend has no such path."""
        return False

    # -- the interface ----------------------------------------------------------------

    def encode(self, data: Sequence, out: Sequence | None = None) -> list[memoryview]:
        if out is not None:
            try:
                if self._encode_fast(data, out):
                    return [flat(o) for o in out]
            except (TypeError, ValueError, BufferError):
                pass  # nothing was written; the checked path below says what is wrong
        views = as_chunks(data, self.data_chunks, self.chunk_size, "data")
        if out is None:
            outs = [memoryview(bytearray(self.chunk_size)) for _ in range(self.coding_chunks)]
        else:
            outs = as_chunks(out, self.coding_chunks, self.chunk_size, "output", writable=True)
        self._encode(views, outs)
        return outs

    def decode(self, available: Mapping[int, object], wanted: Sequence[int],
               out: Mapping[int, object] | None = None) -> dict[int, memoryview]:
        # Buffers are viewed (and their sizes checked) only where they are read or returned.
        if not isinstance(available, Mapping):
            raise CodecError("available must map chunk numbers to buffers")
        for i in available:
            self._check_chunk(i)
        result, missing = {}, set()
        for i in wanted:
            if i in available:
                result[i] = self._view(available, i)
            else:
                missing.add(self._check_chunk(i))
        if not missing:
            return result
        missing = tuple(sorted(missing))
        chosen = self._choose(available, missing)
        sources = [result[i] if i in result else self._view(available, i) for i in chosen]
        outs = [self._out_buffer(out, i) for i in missing]
        result.update(zip(missing, self._reconstruct(chosen, missing, sources, outs),
                          strict=True))
        return result

    def minimum_to_decode(self, wanted: set[int], available: set[int]) -> set[int]:
        wanted = {self._check_chunk(i) for i in wanted}
        available = {self._check_chunk(i) for i in available}
        if wanted <= available:
            return wanted
        return (wanted & available) | set(self._choose(available, wanted - available))

    def update(self, index: int, old: object, new: object, coding: Sequence) -> None:
        if not (isinstance(index, int) and 0 <= index < self.data_chunks):
            raise CodecError(f"{index!r} is not a data chunk number (0..{self.data_chunks - 1})")
        if isinstance(coding, (bytes, bytearray, memoryview)) or not isinstance(coding, Sequence):
            raise CodecError(f"coding must be a sequence of {self.coding_chunks} buffers")
        if len(coding) != self.coding_chunks:
            raise CodecError(f"expected {self.coding_chunks} coding buffers, got {len(coding)}")
        views = same_length([old, new, *coding], "update buffer", writable_from=2)
        if views[0].nbytes > self.chunk_size:
            raise CodecError(f"update of {views[0].nbytes} bytes exceeds the chunk size "
                             f"{self.chunk_size}")
        if views[0].nbytes:
            self._update(index, views[0], views[1], views[2:])

    # -- helpers ------------------------------------------------------------------------

    def _check_chunk(self, index) -> int:
        if not (isinstance(index, int) and 0 <= index < self._width):
            raise CodecError(f"{index!r} is not a chunk number (0..{self._width - 1})")
        return index

    def _view(self, available: Mapping, index: int) -> memoryview:
        return as_bytes(available[index], f"chunk {index}", self.chunk_size)

    def _choose(self, available: Iterable[int], missing: Iterable[int]) -> tuple[int, ...]:
        """K available chunks to decode from, data chunks (the lower numbers) first.

        Raises NotEnoughChunks when fewer than K are available.
        """
        ordered = sorted(available)
        if len(ordered) < self.data_chunks:
            raise NotEnoughChunks(
                f"{self.scheme}: chunks {sorted(missing)} need {self.data_chunks} of "
                f"{self._width} chunks, only {ordered} available")
        return tuple(ordered[:self.data_chunks])

    def _out_buffer(self, out: Mapping[int, object] | None, index: int) -> memoryview | None:
        if out is None or index not in out:
            return None
        return as_bytes(out[index], f"output for chunk {index}", self.chunk_size, writable=True)

    def _new_chunk(self) -> memoryview:
        return memoryview(bytearray(self.chunk_size))
