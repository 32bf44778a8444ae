"""The appliance's regions: memory it lends, with capacity accounting and key checks.

Each region is its own memfd, or with a persist dir its own file there (normally under
/dev/shm) plus a small JSON metadata file, so an appliance restarted on the same host finds
its regions and their contents again. Both are mapped ``MAP_SHARED``; the shm transport
hands the same file descriptor to clients.

The status table is one more memfd shared read-only with shm clients: slot ``s`` holds the
id of the live region that owns it, or 0. Freeing a region zeroes its slot before anything
else, so a client that checks its slot around every copy learns of a free made by anyone.

Every refusal raises an ``ApplianceError`` subclass and changes nothing.
"""
import json
import logging
import mmap
import os
import secrets
from dataclasses import dataclass, field

from ..protocol import NoSpace, NoSuchRegion, OutOfBounds, ProtocolViolation, WrongRegionKey

log = logging.getLogger(__name__)

STATUS_SLOTS = 1 << 20  # at most this many regions at once; 8 MiB of sparse memfd


@dataclass(eq=False)
class Region:
    region_id: int
    size: int
    owner: str
    key: int
    slot: int
    fd: int
    map: mmap.mmap
    view: memoryview = field(repr=False)

    def close(self) -> None:
        """Unmap and close; a mapping still being sent from is unmapped when that ends."""
        self.view.release()
        try:
            self.map.close()
        except BufferError:
            pass  # another connection still holds a slice: the mapping dies with it
        os.close(self.fd)


class RegionStore:
    """Regions of one appliance. Not thread-safe: the appliance uses it from one trio loop."""

    def __init__(self, capacity: int, persist_dir: str | None = None):
        self.capacity = capacity
        self.used = 0
        self._regions: dict[int, Region] = {}
        self._dir = os.path.join(persist_dir, "regions") if persist_dir else None
        self._next_id = 1
        self.status_fd = os.memfd_create("resilfs-status", os.MFD_CLOEXEC)
        os.ftruncate(self.status_fd, STATUS_SLOTS * 8)
        self._status_map = mmap.mmap(self.status_fd, STATUS_SLOTS * 8)
        self._status = memoryview(self._status_map).cast("Q")
        self._free_slots = list(range(STATUS_SLOTS - 1, 0, -1))  # slot 0 is never used
        if self._dir:
            os.makedirs(self._dir, exist_ok=True)
            self._load()

    # -- persistence -------------------------------------------------------------
    def _paths(self, region_id: int) -> tuple[str, str]:
        base = os.path.join(self._dir, f"{region_id:016x}")
        return base + ".data", base + ".meta"

    def _load(self) -> None:
        """Find the regions a previous run left in the persist dir; skip broken ones."""
        for name in sorted(os.listdir(self._dir)):
            if not name.endswith(".meta"):
                continue
            meta_path = os.path.join(self._dir, name)
            try:
                with open(meta_path) as f:
                    meta = json.load(f)
                region_id, size = int(meta["id"]), int(meta["size"])
                data_path = self._paths(region_id)[0]
                fd = os.open(data_path, os.O_RDWR | os.O_CLOEXEC)
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.error("skipping unreadable region metadata %s: %s", meta_path, e)
                continue
            if os.fstat(fd).st_size != size:
                os.close(fd)
                log.error("skipping region %d: data file size differs from %d", region_id, size)
                continue
            region = self._map(region_id, size, str(meta["owner"]), int(meta["key"]), fd)
            self._regions[region_id] = region
            self.used += size
            self._next_id = max(self._next_id, region_id + 1)
        for name in os.listdir(self._dir):  # data files whose metadata never got written
            if name.endswith(".data"):
                try:
                    region_id = int(name[:-5], 16)
                except ValueError:
                    continue
                if region_id not in self._regions:
                    os.unlink(os.path.join(self._dir, name))
        try:
            with open(os.path.join(self._dir, "next-id")) as f:
                self._next_id = max(self._next_id, int(f.read()))
        except (OSError, ValueError):
            pass
        if self._regions:
            log.info("found %d regions (%d bytes) in %s", len(self._regions), self.used,
                     self._dir)

    def _map(self, region_id: int, size: int, owner: str, key: int, fd: int) -> Region:
        slot = self._free_slots.pop()
        mapping = mmap.mmap(fd, size)
        self._status[slot] = region_id
        return Region(region_id, size, owner, key, slot, fd, mapping, memoryview(mapping))

    # -- operations --------------------------------------------------------------
    def alloc(self, size: int, owner: str) -> Region:
        if size <= 0:
            raise ProtocolViolation(f"region size must be positive, not {size}")
        if self.used + size > self.capacity:
            raise NoSpace(f"cannot allocate {size} bytes: {self.capacity - self.used} of "
                          f"{self.capacity} bytes free")
        if not self._free_slots:
            raise NoSpace(f"cannot allocate more than {STATUS_SLOTS - 1} regions")
        region_id = self._next_id
        self._next_id += 1
        key = secrets.randbits(64) or 1
        if self._dir:  # region ids are never reused, not even across restarts
            next_path = os.path.join(self._dir, "next-id")
            with open(next_path + ".tmp", "w") as f:
                f.write(str(self._next_id))
            os.replace(next_path + ".tmp", next_path)
            data_path, meta_path = self._paths(region_id)
            fd = os.open(data_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        else:
            fd = os.memfd_create(f"resilfs-region-{region_id}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            region = self._map(region_id, size, owner, key, fd)
        except OSError as e:
            os.close(fd)
            if self._dir:
                os.unlink(data_path)
            raise NoSpace(f"cannot allocate {size} bytes: {e.strerror}") from None
        if self._dir:
            tmp = meta_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"id": region_id, "size": size, "owner": owner, "key": key}, f)
            os.replace(tmp, meta_path)
        self._regions[region_id] = region
        self.used += size
        return region

    def get(self, region_id: int, key: int) -> Region:
        region = self._regions.get(region_id)
        if region is None:
            raise NoSuchRegion(f"no region {region_id}")
        if region.key != key:
            raise WrongRegionKey(f"wrong key for region {region_id}")
        return region

    def free(self, region_id: int, key: int) -> Region:
        region = self.get(region_id, key)
        self._status[region.slot] = 0  # first: shm clients stop trusting their mapping
        del self._regions[region_id]
        self.used -= region.size
        if self._dir:
            for path in self._paths(region_id)[::-1]:
                os.unlink(path)
        region.close()
        self._free_slots.append(region.slot)
        return region

    def list(self, owner: str | None = None) -> list[Region]:
        return [r for r in self._regions.values() if owner is None or r.owner == owner]

    def __len__(self) -> int:
        return len(self._regions)

    def close(self) -> None:
        """Unmap everything (persisted files stay for the next run)."""
        for region in self._regions.values():
            region.close()
        self._regions.clear()
        self._status.release()
        self._status_map.close()
        os.close(self.status_fd)


def check_range(region: Region, offset: int, length: int) -> memoryview:
    """The region's bytes [offset, offset + length) as a memoryview, or OutOfBounds."""
    if offset + length > region.size:
        raise OutOfBounds(f"range {offset}+{length} is outside region {region.region_id} "
                          f"of {region.size} bytes")
    return region.view[offset:offset + length]
