"""The shm transport: one-sided access to the regions of an appliance on this host.

Address scheme: the appliance serving tcp ``HOST:PORT`` also listens on the abstract Unix
socket ``@resilfs-appliance:PORT`` (``protocol.shm_socket_name``); ``connect(address,
transport="shm")`` takes the same ``HOST:PORT`` and uses only the port. Control operations
(alloc, free, records, intents, ...) go over that socket with the ordinary protocol. For data
the client asks once per region for its memfd (``SHM_MAP``; the appliance checks the region
key before passing the descriptor with SCM_RIGHTS), maps it, and from then on reads and
writes are memory copies in this process: no appliance CPU on the data path.

Free-then-use: the appliance also shares its status table (``SHM_TABLE``), where slot ``s``
holds the id of the live region owning it, or 0. Every data operation checks the region's
slot before copying, and reads check it again after; the appliance clears the slot before
anything else when any client frees the region. So a region freed through any client is
refused with NoSuchRegion from then on. A write that races with another client's
concurrent free may land in the freed memory, which nobody can read any more (each region
has its own memfd, never reused); a read that races with it raises NoSuchRegion.

Mapped views (shm only): ``view(region, offset, length)`` returns a memoryview of the
region's bytes in this process's mapping, after the same key and status-table checks, so a
caller (the resiliency sets) can encode into, decode from, or copy between regions without
an intermediate buffer; ``check_live(region)`` repeats the free check after reading through
a view. A view stays valid memory for as long as it exists (an unmapped region's mapping is
kept until its last view is released), but it sees a region freed meanwhile as stale bytes:
readers must call ``check_live`` afterwards, as ``read_into`` does. ``mapped_view`` is
the same without awaiting, for a region already mapped (None otherwise); a caller that
takes many views checkpoints once with the module's ``checkpoint()``. ``prefault(region)``
allocates a region's pages (fallocate) and maps them all (MAP_POPULATE), in a worker
thread, so that first writes into fresh appliance memory do not take a page fault per
4 KiB (~2.4 us each here, which caps first writes near 1.5 GB/s).

Copies larger than ``COPY_MIN`` go through ``resilfs._copy.copy_into``: a memcpy with the
GIL released.

Liveness: every data operation first checks, without blocking, that the control socket is
still open, and fails with ApplianceUnavailable once it closed (the appliance exited). The
mapping itself outlives the appliance, so a copy that started just before its death still
completes, into memory that nobody will read.
"""
import mmap
import os
import select
import socket
import time
from collections import OrderedDict
from collections.abc import Sequence

import trio

from ..copy import copy_into
from ..protocol import REGION_REF, U64, Op, shm_socket_name, split_address
from .base import NoSpace, NoSuchRegion, RegionHandle
from .ranges import byte_view, check_range
from .sockets import finite_timeout, open_socket
from .stream import StreamClient

MAX_MAPPINGS = 1024  # regions kept mapped at once (least recently used are unmapped)
YIELD_EVERY = 0.001  # seconds of back-to-back copies before yielding to other trio tasks
COPY_MIN = 64 << 10  # copies at least this long release the GIL (copy_into)


class _Mapping:
    __slots__ = ("map", "view", "slot", "region_id")

    def __init__(self, fd: int, size: int, slot: int, region_id: int, populate: bool = False):
        if populate:  # allocate the pages, then map them all (MAP_POPULATE alone maps holes
            os.posix_fallocate(fd, 0, size)  # read-only: the first writes still fault)
        flags = mmap.MAP_SHARED | (mmap.MAP_POPULATE if populate else 0)
        self.map = mmap.mmap(fd, size, flags=flags)
        self.view = memoryview(self.map)
        self.slot = slot
        self.region_id = region_id

    def close(self) -> None:
        """Unmap; a mapping with views still handed out is unmapped when the last one goes."""
        self.view.release()
        try:
            self.map.close()
        except BufferError:
            pass  # views from view() still use it: the mapping dies with them


class ShmClient(StreamClient):
    """An ``ApplianceClient`` for an appliance on this host, copying through mappings."""

    @classmethod
    async def create(cls, address: str, *, secret: bytes, timeout: float) -> "ShmClient":
        """Connect to the appliance's Unix socket and authenticate; map its status table.

        Raises ApplianceUnavailable if no appliance for that port runs on this host.
        """
        _host, port = split_address(address)
        sock = await open_socket(socket.AF_UNIX, shm_socket_name(port),
                                 finite_timeout(timeout), f"{address} (shm)")
        client = cls(address, sock, timeout, unix=True)
        await client._handshake(secret)
        try:
            pending = await client._call(Op.SHM_TABLE, [b""])
            slots = U64.unpack(pending.payload)[0]
            try:
                client._status_map = mmap.mmap(pending.fd, slots * 8, prot=mmap.PROT_READ)
            finally:
                os.close(pending.fd)
        except BaseException:
            await client.aclose()
            raise
        client._status = memoryview(client._status_map).cast("Q")
        client._poller = select.poll()  # cheap liveness probe, see _poll_closed
        client._poller.register(sock.fileno(), select.POLLIN | select.POLLRDHUP)
        client._mappings: OrderedDict[tuple[int, int], _Mapping] = OrderedDict()
        return client

    async def _mapping(self, region: RegionHandle, populate: bool = False) -> _Mapping:
        """The mapping of a live region (mapping it first if needed); NoSuchRegion if freed.

        ``populate`` maps it (again) with every page populated, in a worker thread.
        """
        self._poll_closed()
        if self._dead is not None:
            raise self._unavailable()
        ref = (region.region_id, region.key)
        mapping = self._mappings.get(ref)
        if populate and mapping is not None:
            # not closed: another task may be using it; it is unmapped once collected
            del self._mappings[ref]
            mapping = None
        if mapping is None:
            pending = await self._call(Op.SHM_MAP, [REGION_REF.pack(*ref)])
            size, slot = U64.unpack(pending.payload[:8])[0], U64.unpack(pending.payload[8:])[0]
            try:
                if populate:
                    try:
                        mapping = await trio.to_thread.run_sync(
                            _Mapping, pending.fd, size, slot, region.region_id, True)
                    except OSError as e:
                        raise NoSpace(f"cannot populate region {region.region_id}: "
                                      f"{e.strerror or e}") from None
                else:
                    mapping = _Mapping(pending.fd, size, slot, region.region_id)
            finally:
                os.close(pending.fd)
            existing = self._mappings.get(ref)
            if existing is not None and not populate:  # a concurrent call mapped it first
                mapping.close()
                mapping = existing
            else:
                self._mappings[ref] = mapping
                if len(self._mappings) > MAX_MAPPINGS:
                    self._mappings.popitem(last=False)[1].close()
        else:
            self._mappings.move_to_end(ref)
            await checkpoint()
            if self._mappings.get(ref) is not mapping:  # dropped or replaced meanwhile
                return await self._mapping(region)
        self._check_live(ref, mapping)
        return mapping

    def _poll_closed(self) -> None:
        """As StreamClient's, but a poll(0) first: nothing to read and no hang-up (the usual
        case) costs one syscall and no exception."""
        if self._dead is None and not self._reading and not self._poller.poll(0):
            return
        super()._poll_closed()

    def _check_live(self, ref: tuple[int, int], mapping: _Mapping) -> None:
        if self._dead is not None:
            raise self._unavailable()
        if self._status[mapping.slot] != mapping.region_id:
            self._drop(ref)
            raise NoSuchRegion(f"region {mapping.region_id} was freed")

    def _drop(self, ref: tuple[int, int]) -> None:
        mapping = self._mappings.pop(ref, None)
        if mapping is not None:
            mapping.close()

    async def free(self, region: RegionHandle) -> None:
        await super().free(region)
        self._drop((region.region_id, region.key))

    async def read_into(self, region: RegionHandle, offset: int, buffer) -> None:
        view = byte_view(buffer, writable=True)
        check_range(region, offset, len(view))
        mapping = await self._mapping(region)
        _copy(view, mapping.view[offset:offset + len(view)])
        self._check_live((region.region_id, region.key), mapping)

    async def write(self, region: RegionHandle, offset: int, data) -> None:
        view = byte_view(data)
        check_range(region, offset, len(view))
        mapping = await self._mapping(region)
        _copy(mapping.view[offset:offset + len(view)], view)

    async def view(self, region: RegionHandle, offset: int, length: int,
                   writable: bool = False) -> memoryview:
        """The region's bytes [offset, offset + length) as a view of this process's mapping.

        Checks the range, key and status table like ``read_into``; raises OutOfBounds,
        NoSuchRegion, WrongRegionKey or ApplianceUnavailable as it does. Bytes read through
        the view are only trustworthy if ``check_live(region)`` passes afterwards. Cancelled:
        nothing happened (the region may stay mapped).
        """
        check_range(region, offset, length)
        mapping = await self._mapping(region)
        view = mapping.view[offset:offset + length]
        return view if writable else view.toreadonly()

    def mapped_view(self, region: RegionHandle, offset: int, length: int,
                    writable: bool = False) -> memoryview | None:
        """``view`` without awaiting, for a region this client has mapped already; None if
        it has not (then ``await view(...)``). Raises as ``view`` does. No checkpoint: a
        caller making many calls should ``await checkpoint()`` once."""
        ref = (region.region_id, region.key)
        mapping = self._mappings.get(ref)
        if mapping is None:
            return None
        check_range(region, offset, length)
        self._poll_closed()
        self._check_live(ref, mapping)
        self._mappings.move_to_end(ref)
        view = mapping.view[offset:offset + length]
        return view if writable else view.toreadonly()

    def check_live(self, region: RegionHandle) -> None:
        """NoSuchRegion if the region was freed (by any client) since it was mapped;
        ApplianceUnavailable if the appliance went away. Never blocks."""
        ref = (region.region_id, region.key)
        mapping = self._mappings.get(ref)
        if mapping is None:
            raise NoSuchRegion(f"region {region.region_id} is not mapped any more")
        self._poll_closed()
        self._check_live(ref, mapping)

    async def prefault(self, region: RegionHandle) -> None:
        """Allocate ``region``'s pages and map them all (in a worker thread), so that later
        writes do not page-fault. Raises like ``view``, and NoSpace if the host has no memory
        for the pages; cancelled: the region may stay mapped, populated or not."""
        await self._mapping(region, populate=True)

    async def _map_all(self, ranges, writable: bool) -> list[tuple[_Mapping, int, memoryview]]:
        """Map every range's region; on return (no await since) every mapping is live."""
        checked = []
        for region, offset, buffer in ranges:
            view = byte_view(buffer, writable)
            check_range(region, offset, len(view))
            checked.append(((region.region_id, region.key), region, offset, view))
        if len({ref for ref, *_ in checked}) > MAX_MAPPINGS // 2:
            raise ValueError(f"a vectored operation may touch at most {MAX_MAPPINGS // 2} "
                             "regions of one appliance")
        while True:  # a concurrent call may have unmapped one while we mapped the next
            for _, region, _, _ in checked:
                await self._mapping(region)
            mappings = [self._mappings.get(ref) for ref, *_ in checked]
            if all(m is not None for m in mappings):
                break
        for (ref, *_), mapping in zip(checked, mappings, strict=True):
            self._check_live(ref, mapping)
        return [(mapping, offset, view)
                for (_, _, offset, view), mapping in zip(checked, mappings, strict=True)]

    async def readv(self, ranges: Sequence[tuple[RegionHandle, int, object]]) -> None:
        mapped = await self._map_all(ranges, True)
        for mapping, offset, view in mapped:
            _copy(view, mapping.view[offset:offset + len(view)])
        for mapping, _, _ in mapped:
            if self._status[mapping.slot] != mapping.region_id:
                raise NoSuchRegion(f"region {mapping.region_id} was freed")

    async def writev(self, ranges: Sequence[tuple[RegionHandle, int, object]]) -> None:
        for mapping, offset, view in await self._map_all(ranges, False):
            _copy(mapping.view[offset:offset + len(view)], view)

    def _fail(self, reason: str) -> None:
        super()._fail(reason)
        for mapping in getattr(self, "_mappings", {}).values():
            mapping.close()
        if hasattr(self, "_mappings"):
            self._mappings.clear()


_last_yield = 0.0  # perf_counter of the last yield of checkpoint(), in any shm client


async def checkpoint() -> None:
    """Check for cancellation on every call; yield to other tasks once per YIELD_EVERY s.

    A full trio checkpoint costs as much as copying ~100 KiB here, so shm copies do not
    yield every time; other tasks still run at least once a millisecond.
    """
    global _last_yield
    now = time.perf_counter()
    if now - _last_yield >= YIELD_EVERY:
        _last_yield = now
        await trio.lowlevel.checkpoint()
    else:
        await trio.lowlevel.checkpoint_if_cancelled()


def _copy(dst: memoryview, src: memoryview) -> None:
    """``dst[:] = src``; long copies with the GIL released."""
    if len(dst) >= COPY_MIN:
        copy_into(dst, src)
    else:
        dst[:] = src
