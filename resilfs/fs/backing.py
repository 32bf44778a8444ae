"""File data on resiliency sets: the product's ``Backing`` (see ``resilfs.fs.data``).

Set number N of a filesystem is the resiliency set ``data-N`` of the filesystem's owner
name. Sets are opened on first use (which resyncs what a crashed writer left behind) and
handed to the mount's rebuild worker. Set-layer errors (the sets layer raises SetError for
transport failures too) become DataUnavailable: EIO for the files on that set, never wrong
data.
"""
import logging
import math
import zlib

import trio

from ..codec import make_codec
from ..scheme import Scheme
from ..sets import AppliancePool, NoPlacement, RebuildWorker, ResiliencySet, SetError
from .data import Backing
from .errors import DataUnavailable, NoSpace

log = logging.getLogger(__name__)

CAPACITY_CACHE = 2.0  # seconds a capacity figure is reused (statfs is frequent)


def set_name(set_id: int) -> str:
    return f"data-{set_id}"


class SetBacking(Backing):
    """Sets of one filesystem, created with ``scheme`` and ``codec`` (a backend name, None:
    the default here) and opened lazily.

    Placement: a new set's regions go to the appliances with the most free memory first,
    and ``free_bytes`` counts only the sets of ``set_size`` that fit that way, so the
    space df shows can be written (a scheme of width W needs W distinct appliances with
    room for a region each)."""

    def __init__(self, pool: AppliancePool, owner: str, scheme: str, *,
                 write_mode: str = "parallel", chunk_size: int = 64 * 1024,
                 codec: str | None = None, rebuild: RebuildWorker | None = None,
                 set_size: int = 256 << 20):
        self.pool = pool
        self.owner = owner
        self.scheme = scheme
        self.write_mode = write_mode
        self.chunk_size = chunk_size
        self.codec = codec
        self.rebuild = rebuild
        self._sets: dict[int, ResiliencySet] = {}
        self._opening: dict[int, trio.Lock] = {}
        self.set_size = set_size
        self._scheme = Scheme.parse(scheme)
        self._capacity: tuple[float, dict[str, int]] | None = None  # (when, free by address)

    def sets(self) -> dict[int, ResiliencySet]:
        """The sets opened so far (for status and scrub)."""
        return dict(self._sets)

    def _adopt(self, set_id: int, s: ResiliencySet) -> ResiliencySet:
        self._sets[set_id] = s
        if self.rebuild is not None:
            self.rebuild.watch(s)
        return s

    def adopt(self, set_id: int, s: ResiliencySet) -> None:
        """Serve set ``set_id`` from ``s``, made elsewhere (a snapshot's set, whose record is
        stored later); the rebuild worker leaves it alone until ``watch``."""
        self._sets[set_id] = s

    def watch(self, s: ResiliencySet) -> None:
        """Hand an adopted set to the rebuild worker (it restores the set's redundancy)."""
        if self.rebuild is not None:
            self.rebuild.watch(s)

    async def create_set(self, set_id: int, size: int) -> None:
        """Create set ``set_id`` on the appliances with the most free memory (ties: in a
        rotation by the set's name, to spread sets); NoSpace if they cannot hold it."""
        free = await self._appliance_free(fresh=True)
        candidates = list(self.pool.addresses)
        if candidates:
            start = zlib.crc32(f"{self.owner}/{set_name(set_id)}".encode()) % len(candidates)
            candidates = candidates[start:] + candidates[:start]
            candidates.sort(key=lambda a: -free.get(a, -1))  # down ones last
        self._capacity = None
        try:
            codec = make_codec(self.scheme, self.chunk_size, self.codec)
            s = await ResiliencySet.create(self.pool, self.scheme, codec, size, self.owner,
                                           set_name(set_id), write_mode=self.write_mode,
                                           appliances=candidates, chunk_size=self.chunk_size)
        except NoPlacement as exc:
            raise NoSpace(f"no room for data set {set_id}: {exc}") from exc
        except SetError as exc:
            raise DataUnavailable(f"cannot create data set {set_id}: {exc}") from exc
        self._adopt(set_id, s)

    async def get(self, set_id: int) -> ResiliencySet:
        """The open set ``set_id``, opening it on first use (one opener at a time)."""
        s = self._sets.get(set_id)
        if s is not None:
            return s
        async with self._opening.setdefault(set_id, trio.Lock()):
            s = self._sets.get(set_id)
            if s is None:
                try:
                    s = await ResiliencySet.open(self.pool, self.owner, set_name(set_id),
                                                 write_mode=self.write_mode)
                except SetError as exc:
                    raise DataUnavailable(f"cannot open data set {set_id}: {exc}") from exc
                self._adopt(set_id, s)
        return s

    async def destroy_set(self, set_id: int) -> None:
        """Delete set ``set_id`` (a deleted snapshot's): its records, then its regions."""
        s = await self.get(set_id)
        if self.rebuild is not None:
            self.rebuild.unwatch(s)
        self._sets.pop(set_id, None)
        try:
            await s.destroy()
        except SetError as exc:
            raise DataUnavailable(f"cannot delete data set {set_id}: {exc}") from exc
        self._capacity = None

    async def open_all(self, set_ids) -> None:
        """Open every set (so that status covers them and rebuild watches them); a set that
        cannot be opened is logged and left for its first use."""
        for set_id in set_ids:
            try:
                await self.get(set_id)
            except DataUnavailable as exc:
                log.warning("%s", exc)

    async def read_into(self, set_id: int, offset: int, buffer) -> None:
        s = self._sets.get(set_id) or await self.get(set_id)
        try:
            await s.read_into(offset, buffer)
        except SetError as exc:
            raise DataUnavailable(f"data set {set_id}: {exc}") from exc

    async def write(self, set_id: int, offset: int, data) -> None:
        s = self._sets.get(set_id) or await self.get(set_id)
        try:
            await s.write(offset, data)
        except SetError as exc:
            raise DataUnavailable(f"data set {set_id}: {exc}") from exc

    async def discard(self, set_id: int, offset: int, length: int) -> None:
        """Give the appliance memory of the free range back (the whole stripes in it, while
        the set is healthy: ``ResiliencySet.discard``); set errors are logged."""
        try:
            s = self._sets.get(set_id) or await self.get(set_id)
            await s.discard(offset, length)
        except (DataUnavailable, SetError) as exc:
            log.warning("data set %d: could not give back %d bytes at %d: %s", set_id,
                        length, offset, exc)

    async def free_bytes(self) -> int:
        """Bytes of file data in the sets of ``set_size`` that the appliances' free memory
        can still hold with one region per member on distinct appliances (cached a moment)."""
        free = await self._appliance_free()
        k, width = self._scheme.data_chunks, self._scheme.width
        stripe = k * self.chunk_size
        region = math.ceil(self.set_size / stripe) * self.chunk_size
        return placeable(list(free.values()), region, width) * self.set_size

    async def _appliance_free(self, fresh: bool = False) -> dict[str, int]:
        """Free memory of every appliance that answers (cached CAPACITY_CACHE seconds)."""
        now = trio.current_time()
        if not fresh and self._capacity is not None and now - self._capacity[0] < CAPACITY_CACHE:
            return self._capacity[1]
        free = await self.pool.free_memory()
        self._capacity = (now, free)
        return free

    async def aclose(self) -> None:
        """Close every set (ending write intents, storing membership); errors are logged."""
        for set_id, s in list(self._sets.items()):
            if self.rebuild is not None:
                self.rebuild.unwatch(s)
            try:
                await s.close()
            except SetError as exc:
                log.warning("closing data set %d: %s", set_id, exc)
        self._sets.clear()


def placeable(free: list[int], region: int, width: int) -> int:
    """How many sets of ``width`` regions of ``region`` bytes, each region on a different
    appliance, fit into appliances with ``free`` bytes each (what most-free-first placement
    achieves): the largest n with sum(min(slots_i, n)) >= width * n."""
    slots = [f // region for f in free]
    lo, hi = 0, sum(slots) // width if width else 0
    while lo < hi:
        n = (lo + hi + 1) // 2
        if sum(min(s, n) for s in slots) >= width * n:
            lo = n
        else:
            hi = n - 1
    return lo
