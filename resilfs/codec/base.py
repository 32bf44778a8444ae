"""The codec interface shared by every relationship: mirror, XOR parity, Reed-Solomon.

A codec knows its geometry (K data chunks, M coding chunks, chunk size) and turns K data
chunks into M coding chunks; it is separate from striping (see ``resilfs.codec.geometry``).
Chunks are numbered 0..K-1 for data and K..K+M-1 for coding. Buffers are anything that
supports the buffer protocol; results are memoryviews.
"""
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

from ..errors import ResilfsError
from ..scheme import Scheme


class CodecError(ResilfsError, ValueError):
    """Bad input to a codec: wrong chunk count or size, unknown chunk index."""


class NotEnoughChunks(CodecError):
    """Fewer chunks are available than decoding needs; nothing was produced."""


class BackendUnavailable(ResilfsError):
    """The requested codec backend is not installed on this machine."""


class Codec(ABC):
    """Encode, decode and update one stripe of K data chunks and M coding chunks.

    Every method checks its inputs and raises CodecError (never returns garbage). Methods
    release the GIL around the math where the backend allows, so they may run in worker
    threads; a codec object holds no per-call state and is safe to share between threads.
    """

    #: the backend's name as recorded in a filesystem's format: "mirror", "xor", "isal", "zfec"
    backend: str

    #: M rows of K GF(2^8) coefficients: coding chunk K+j = XOR_i coding_matrix[j][i] * data_i
    coding_matrix: tuple[tuple[int, ...], ...]

    def __init__(self, scheme: Scheme, chunk_size: int):
        if chunk_size < 1:
            raise CodecError(f"chunk size must be positive, got {chunk_size}")
        self.scheme = scheme
        self.chunk_size = chunk_size

    @property
    def data_chunks(self) -> int:
        return self.scheme.data_chunks

    @property
    def coding_chunks(self) -> int:
        return self.scheme.coding_chunks

    @property
    def total_chunks(self) -> int:
        return self.scheme.width

    def coefficient(self, coding_index: int, data_index: int) -> int:
        """The GF(2^8) coefficient of data chunk ``data_index`` in coding chunk ``coding_index``.

        Every code here is linear and byte-position-wise: coding chunk K+j is the XOR over i
        of ``coefficient(K+j, i) * data_i`` (GF(2^8), polynomial 0x11d). A forwarded write
        therefore updates coding chunk K+j with ``gf_mad(coding, coef, old ^ new)`` (see
        ``resilfs.codec.kernels``). Raises CodecError for an index outside its range.
        """
        k, m = self.data_chunks, self.coding_chunks
        if not (isinstance(coding_index, int) and k <= coding_index < k + m):
            raise CodecError(f"{coding_index!r} is not a coding chunk number ({k}..{k + m - 1})")
        if not (isinstance(data_index, int) and 0 <= data_index < k):
            raise CodecError(f"{data_index!r} is not a data chunk number (0..{k - 1})")
        return self.coding_matrix[coding_index - k][data_index]

    @property
    def stripe_size(self) -> int:
        """Bytes of file data one stripe holds (K chunks)."""
        return self.data_chunks * self.chunk_size

    @abstractmethod
    def encode(self, data: Sequence, out: Sequence | None = None) -> list[memoryview]:
        """Return the M coding chunks for K data chunks of ``chunk_size`` bytes each.

        ``out``, if given, is M writable buffers the coding chunks are written into (no
        allocation); the returned views then refer to them.
        """

    @abstractmethod
    def decode(self, available: Mapping[int, object], wanted: Sequence[int],
               out: Mapping[int, object] | None = None) -> dict[int, memoryview]:
        """Reconstruct the chunks numbered ``wanted`` (data or coding) from ``available``.

        ``available`` maps chunk numbers to chunk buffers. Raises NotEnoughChunks when the
        available chunks cannot determine the wanted ones. A wanted chunk that is available
        is returned as a view of its buffer (no copy). ``out``, if given, maps chunk numbers
        to writable ``chunk_size`` buffers that reconstructed chunks are written into; other
        reconstructed chunks are new buffers.
        """

    @abstractmethod
    def minimum_to_decode(self, wanted: set[int], available: set[int]) -> set[int]:
        """Which of ``available`` must be read to obtain ``wanted``.

        Raises NotEnoughChunks if no subset suffices, CodecError for an unknown chunk number.
        """

    def kernel(self, sources: Sequence[int], outputs: Sequence[int]):
        """The linear map from chunks ``sources`` to chunks ``outputs`` as a kernel object,
        or None if this backend has none (then use ``encode`` / ``decode``).

        A kernel's ``encode(source_buffers, output_buffers)`` writes the outputs from the
        sources, in the given orders, for buffers of any one length (the codes are
        byte-position-wise); ``resilfs._copy.copy_parallel`` runs it on its helper thread
        when it has a ``lane_kernel``. Raises CodecError for chunk numbers out of range,
        overlapping, or sources that do not determine the outputs.
        """
        return None

    @abstractmethod
    def update(self, index: int, old: object, new: object, coding: Sequence) -> None:
        """Apply a change of data chunk ``index`` from ``old`` to ``new`` to the coding chunks.

        ``old``, ``new`` and each buffer of ``coding`` (M writable buffers) cover the same byte
        range of their chunks and have equal lengths, which may be shorter than a chunk: the
        codes are byte-position-wise, so a partial write updates only the bytes it touches.
        The coding buffers are modified in place; the result equals a full re-encode.
        """
