"""File data on resiliency sets: the product's ``Backing`` (see ``resilfs.fs.data``).

Set number N of a filesystem is the resiliency set ``data-N`` of the filesystem's owner
name. Sets are opened on first use (which resyncs what a crashed writer left behind) and
handed to the mount's rebuild worker. Set-layer errors (the sets layer raises SetError for
transport failures too) become DataUnavailable: EIO for the files on that set, never wrong
data.
"""
import logging

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
    the default here) and opened lazily."""

    def __init__(self, pool: AppliancePool, owner: str, scheme: str, *,
                 write_mode: str = "parallel", chunk_size: int = 64 * 1024,
                 codec: str | None = None, rebuild: RebuildWorker | None = None):
        self.pool = pool
        self.owner = owner
        self.scheme = scheme
        self.write_mode = write_mode
        self.chunk_size = chunk_size
        self.codec = codec
        self.rebuild = rebuild
        self._sets: dict[int, ResiliencySet] = {}
        self._opening: dict[int, trio.Lock] = {}
        self._capacity: tuple[float, int] | None = None

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
        try:
            codec = make_codec(self.scheme, self.chunk_size, self.codec)
            s = await ResiliencySet.create(self.pool, self.scheme, codec, size, self.owner,
                                           set_name(set_id), write_mode=self.write_mode,
                                           chunk_size=self.chunk_size)
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

    async def free_bytes(self) -> int:
        """Free appliance memory times the scheme's data fraction (cached a moment)."""
        now = trio.current_time()
        if self._capacity is not None and now - self._capacity[0] < CAPACITY_CACHE:
            return self._capacity[1]
        free = await self.pool.free_memory()
        scheme = Scheme.parse(self.scheme)
        free = free * scheme.data_chunks // scheme.width
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
