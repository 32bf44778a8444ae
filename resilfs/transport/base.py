"""The client side of an appliance: one interface, implemented by tcp, shm and rdma.

An ``ApplianceClient`` is a connection to one appliance, authenticated with the cluster
secret. Data operations name a region by its ``RegionHandle`` (which carries the region key
that the appliance checks on every operation) and act on byte ranges of it directly:
client-side memory access, no file semantics on the appliance.

Every method may raise ``ApplianceUnavailable`` (connection lost, appliance dead or not
answering within the client's timeout) or an ``ApplianceError`` subclass for a refusal.
A refused operation changed nothing. Cancelling a call abandons it: for a write, the range
may or may not have been written, as with an interrupted write(2).
"""
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from ..protocol import (
    ApplianceError,
    AuthenticationFailed,
    ForwardFailed,
    NoSpace,
    NoSuchRegion,
    OutOfBounds,
    ProtocolViolation,
    RecordConflict,
    TransportError,
    Unsupported,
    WrongRegionKey,
)

# the refusals are the protocol's (both sides of the wire use them); clients import them here
__all__ = [
    "DEFAULT_TIMEOUT", "ApplianceClient", "ApplianceError", "ApplianceStat",
    "ApplianceUnavailable", "AuthenticationFailed", "ForwardFailed", "ForwardTarget", "NoSpace",
    "NoSuchRegion", "OutOfBounds", "ProtocolViolation", "RecordConflict", "RegionHandle",
    "RegionInfo", "TransportError", "Unsupported", "WrongRegionKey",
]

DEFAULT_TIMEOUT = 1.0  # seconds before an unanswered request marks the appliance unavailable


class ApplianceUnavailable(TransportError):
    """The appliance cannot be reached, died, or did not answer in time."""


@dataclass(frozen=True)
class RegionHandle:
    """Everything a client needs to access a region: where it is and its key."""

    appliance: str  # the appliance's address as given to connect(), e.g. "127.0.0.1:7400"
    region_id: int
    size: int
    key: int  # random 64-bit secret, like an RDMA rkey


@dataclass(frozen=True)
class ForwardTarget:
    """Where an appliance forwards a write (claims 6-8): a region on a peer appliance.

    ``coefficient`` 0 copies the new data verbatim (mirror); 1 XORs the delta (old ^ new) in
    (parity); 2..255 multiply-accumulates the delta in GF(2^8) (Reed-Solomon parity).
    """

    region: RegionHandle  # region.appliance is the peer's address, as the appliance reaches it
    coefficient: int


@dataclass(frozen=True)
class RegionInfo:
    """A region as listed by an appliance (no key: listing does not reveal keys)."""

    region_id: int
    size: int
    owner: str


@dataclass(frozen=True)
class ApplianceStat:
    capacity: int
    used: int
    regions: int
    appliance_id: str  # stable across restarts with the same persist dir


class ApplianceClient(ABC):
    """A connection to one appliance. Use ``async with`` or call ``aclose()``."""

    address: str

    # -- regions ---------------------------------------------------------------
    @abstractmethod
    async def alloc(self, size: int, owner: str) -> RegionHandle:
        """Allocate a zero-filled region of ``size`` bytes owned by filesystem ``owner``."""

    @abstractmethod
    async def free(self, region: RegionHandle) -> None:
        """Free a region; later operations on it raise NoSuchRegion."""

    @abstractmethod
    async def clone(self, region: RegionHandle) -> RegionHandle:
        """Copy a region into a new one inside the appliance (no data crosses the network)."""

    @abstractmethod
    async def regions(self, owner: str | None = None) -> list[RegionInfo]:
        """List the regions (of one owner, or all)."""

    @abstractmethod
    async def lookup(self, region_id: int, key: int) -> RegionHandle:
        """Rebuild a handle for a known region id and key (after a restart); checks the key."""

    @abstractmethod
    async def stat(self) -> ApplianceStat:
        """The appliance's capacity and use."""

    # -- data ------------------------------------------------------------------
    @abstractmethod
    async def read_into(self, region: RegionHandle, offset: int, buffer) -> None:
        """Fill the writable ``buffer`` with the region's bytes starting at ``offset``."""

    async def read(self, region: RegionHandle, offset: int, length: int) -> memoryview:
        """Return ``length`` bytes of the region starting at ``offset``."""
        buffer = bytearray(length)
        await self.read_into(region, offset, buffer)
        return memoryview(buffer)

    @abstractmethod
    async def write(self, region: RegionHandle, offset: int, data) -> None:
        """Write ``data`` (any buffer) into the region at ``offset``."""

    @abstractmethod
    async def readv(self, ranges: Sequence[tuple[RegionHandle, int, object]]) -> None:
        """Vectored read: fill each (region, offset, writable buffer) in one request."""

    @abstractmethod
    async def writev(self, ranges: Sequence[tuple[RegionHandle, int, object]]) -> None:
        """Vectored write of (region, offset, data) ranges in one request; all or error."""

    # -- small durable records (set membership, superblocks) --------------------
    @abstractmethod
    async def record_get(self, owner: str, name: str) -> tuple[int, bytes] | None:
        """Return (generation, value) of a record, or None if it does not exist."""

    @abstractmethod
    async def record_put(self, owner: str, name: str, value: bytes,
                         expected_generation: int) -> int:
        """Store a record if its generation is ``expected_generation`` (0: must not exist).

        Returns the new generation (expected + 1); raises RecordConflict otherwise.
        """

    @abstractmethod
    async def record_list(self, owner: str) -> list[str]:
        """Names of the records of one owner."""

    @abstractmethod
    async def record_delete(self, owner: str, name: str) -> None:
        """Delete a record (no error if it does not exist)."""

    # -- observer: write intents (claim 19) -------------------------------------
    @abstractmethod
    async def intent_begin(self, owner: str, set_id: str, intent_id: int,
                           extents: Sequence[tuple[int, int]]) -> None:
        """Record that a multi-write to (offset, length) ``extents`` of a set is starting."""

    @abstractmethod
    async def intent_end(self, owner: str, set_id: str, intent_ids: Sequence[int]) -> None:
        """Record that these multi-writes completed on every member (batched clearing)."""

    @abstractmethod
    async def intent_pending(self, owner: str,
                             set_id: str) -> list[tuple[int, list[tuple[int, int]]]]:
        """The (intent id, extents) of multi-writes that began and never ended."""

    # -- forwarded writes (claims 6-8) --------------------------------------------
    def mapped_view(self, region: RegionHandle, offset: int, length: int,
                    writable: bool = False) -> memoryview | None:
        """Bytes [offset, offset + length) of ``region`` as a view of memory mapped in this
        process, if this transport maps regions here and has this one mapped already; else
        None (the default: tcp and rdma), and the caller reads or writes as usual.

        Writing into the view writes the region; bytes read from it count only if the
        region is still live afterwards (see ShmClient.check_live). Never blocks.
        """
        return None

    @abstractmethod
    async def forward_write(self, region: RegionHandle, offset: int, data,
                            targets: Sequence[ForwardTarget]) -> None:
        """Write ``data`` at ``offset`` of ``region`` on this appliance, which then updates
        every target at the same offset itself and answers once all of them acknowledged.

        Raises ForwardFailed when the local write happened but a target could not be
        updated (unreachable, refused); refusals of the local write change nothing.
        """

    @abstractmethod
    async def apply_delta(self, region: RegionHandle, offset: int, delta,
                          coefficient: int) -> None:
        """Fold ``delta`` into the region at ``offset`` as a forward target would (see
        ForwardTarget: 0 copies it verbatim, 1 XORs it, others multiply-accumulate it)."""

    # -- lifecycle ---------------------------------------------------------------
    @abstractmethod
    async def aclose(self) -> None:
        """Close the connection; in-flight calls raise ApplianceUnavailable."""

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info):
        await self.aclose()
