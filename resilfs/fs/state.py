"""The namespace in memory, changed only by ``State.apply(record)``.

Live operation and replay share that one function: mounting is ``apply`` over the records
of the latest checkpoint and then over the journal batches written after it. ``apply``
checks nothing (the metadata layer validated the change before recording it); a record
that does not fit the state raises CorruptRecord, which during replay means damaged
metadata. ``apply`` never awaits and never does I/O.
"""
import stat
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass

from .allocator import Allocator
from .extents import LOST, ExtentMap, page_up
from .journal_records import (
    ATTR_ATIME,
    ATTR_CTIME,
    ATTR_GID,
    ATTR_MODE,
    ATTR_MTIME,
    ATTR_SIZE,
    ATTR_UID,
    CorruptRecord,
    Op,
)

ROOT_INODE = 1


@dataclass(frozen=True)
class Format:
    """How a filesystem makes data sets: chosen at mkfs, fixed afterwards."""

    scheme: str
    chunk_size: int
    set_size: int
    codec: str  # the codec backend ("mirror", "xor", "isal", "zfec"): parity bytes differ


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot (resilfs.fs.snapshots): its copy of the tree is inodes first..last, the
    top one named ``name`` in ``.snapshots``; ``sources`` are the inodes it copied."""

    snap_id: int
    name: bytes
    time: int
    source: int
    top: int
    first: int
    last: int
    size: int
    sources: frozenset


class Directory:
    """Names of a directory: a dict for lookups plus stable readdir cookies.

    Every entry gets a cookie from an increasing counter when it is added, so cookie order
    is insertion order and a listing resumed from a cookie never repeats or skips an entry
    that stayed. Removed entries leave a tombstone in the cookie list until more than half
    of it is tombstones; then it is compacted (cookies do not change).
    """

    __slots__ = ("entries", "_cookies", "_names", "_next_cookie", "_dead")

    def __init__(self):
        self.entries: dict[bytes, tuple[int, int]] = {}  # name -> (ino, cookie)
        self._cookies: list[int] = []
        self._names: list[bytes | None] = []
        self._next_cookie = 1
        self._dead = 0

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, name: bytes) -> int | None:
        entry = self.entries.get(name)
        return None if entry is None else entry[0]

    def add(self, name: bytes, ino: int) -> None:
        if name in self.entries:
            raise KeyError(name)
        cookie = self._next_cookie
        self._next_cookie += 1
        self.entries[name] = (ino, cookie)
        self._cookies.append(cookie)
        self._names.append(name)

    def remove(self, name: bytes) -> int:
        ino, cookie = self.entries.pop(name)
        self._names[bisect_right(self._cookies, cookie) - 1] = None
        self._dead += 1
        if self._dead > 64 and self._dead * 2 > len(self._names):
            live = [(c, n) for c, n in zip(self._cookies, self._names, strict=True)
                    if n is not None]
            self._cookies = [c for c, _ in live]
            self._names = [n for _, n in live]
            self._dead = 0
        return ino

    def listing(self, after: int = 0) -> Iterator[tuple[int, bytes, int]]:
        """``(cookie, name, ino)`` of the entries with a cookie above ``after``, in order."""
        for i in range(bisect_right(self._cookies, after), len(self._cookies)):
            name = self._names[i]
            if name is not None:
                yield self._cookies[i], name, self.entries[name][0]


class Inode:
    __slots__ = ("ino", "mode", "uid", "gid", "rdev", "size", "atime", "mtime", "ctime",
                 "nlink", "target", "xattrs", "extents", "dir", "parent")

    def __init__(self, ino, mode, uid, gid, rdev, size, atime, mtime, ctime, nlink, target):
        self.ino, self.mode, self.uid, self.gid, self.rdev = ino, mode, uid, gid, rdev
        self.size, self.atime, self.mtime, self.ctime = size, atime, mtime, ctime
        self.nlink, self.target = nlink, target
        self.xattrs: dict[bytes, bytes] = {}
        self.extents = ExtentMap() if stat.S_ISREG(mode) else None
        self.dir = Directory() if stat.S_ISDIR(mode) else None
        self.parent = ino if ino == ROOT_INODE else 0

    def is_dir(self) -> bool:
        return self.dir is not None


class State:
    """Inodes, directories, extents and set space of one filesystem."""

    def __init__(self):
        self.inodes: dict[int, Inode] = {}
        self.next_ino = ROOT_INODE
        self.allocator = Allocator()
        self.format: Format | None = None
        # snapshots: read-only sets outside the allocator (set id -> (size, snapshot id))
        self.snapsets: dict[int, tuple[int, int]] = {}
        # and their membership records as taken (set id -> (source set id, record)): a
        # mount stores one that a crash kept off the appliances (resilfs.fs.snapshot_sets)
        self.snapset_records: dict[int, tuple[int, bytes]] = {}
        self.snapshots: dict[int, SnapshotInfo] = {}

    @property
    def next_set_id(self) -> int:
        return max(self.allocator.set_sizes(), default=0) + 1

    def _free(self, pieces) -> None:
        for piece in pieces:
            # snapshot sets are freed whole; LOST is no set
            if piece[0] not in self.snapsets and piece[0] != LOST:
                self.allocator.free(*piece)

    def apply(self, record) -> None:
        """Change the state as ``record`` says; CorruptRecord if it does not fit."""
        try:
            _APPLY[record[0]](self, *record[1:])
        except (KeyError, ValueError, AttributeError, TypeError) as exc:
            raise CorruptRecord(f"record {record!r} does not fit the state: {exc!r}") from None

    # -- the ops -----------------------------------------------------------------
    def _inode(self, ino, mode, uid, gid, rdev, size, atime, mtime, ctime, nlink, target):
        self.inodes[ino] = Inode(ino, mode, uid, gid, rdev, size, atime, mtime, ctime, nlink,
                                 target)
        self.next_ino = max(self.next_ino, ino + 1)

    def _dirent(self, parent, name, ino):
        self.inodes[parent].dir.add(name, ino)
        child = self.inodes[ino]
        if child.is_dir():
            child.parent = parent

    def _link(self, parent, name, ino, time):
        p, child = self.inodes[parent], self.inodes[ino]
        p.dir.add(name, ino)
        if child.is_dir():
            child.nlink += 2
            child.parent = parent
            p.nlink += 1
        else:
            child.nlink += 1
        p.mtime = p.ctime = child.ctime = time

    def _drop(self, p: Inode, name: bytes, time: int) -> None:
        child = self.inodes[p.dir.remove(name)]
        if child.is_dir():
            child.nlink = 0
            p.nlink -= 1
        else:
            child.nlink -= 1
        child.ctime = time

    def _unlink(self, parent, name, time):
        p = self.inodes[parent]
        self._drop(p, name, time)
        p.mtime = p.ctime = time

    def _rename(self, old_parent, old_name, new_parent, new_name, time):
        op, np = self.inodes[old_parent], self.inodes[new_parent]
        if np.dir.get(new_name) is not None:
            self._drop(np, new_name, time)
        ino = op.dir.remove(old_name)
        np.dir.add(new_name, ino)
        child = self.inodes[ino]
        if child.is_dir():
            op.nlink -= 1
            np.nlink += 1
            child.parent = new_parent
        child.ctime = time
        op.mtime = op.ctime = np.mtime = np.ctime = time

    def _setattr(self, ino, mask, mode, uid, gid, size, atime, mtime, ctime):
        node = self.inodes[ino]
        if mask & ATTR_MODE:
            node.mode = (node.mode & ~0o7777) | (mode & 0o7777)
        if mask & ATTR_UID:
            node.uid = uid
        if mask & ATTR_GID:
            node.gid = gid
        if mask & ATTR_SIZE:
            if size < node.size and node.extents is not None:
                self._free(node.extents.cut(page_up(size)))
            node.size = size
        if mask & ATTR_ATIME:
            node.atime = atime
        if mask & ATTR_MTIME:
            node.mtime = mtime
        if mask & ATTR_CTIME:
            node.ctime = ctime

    def _written(self, ino, size, time):
        node = self.inodes[ino]
        node.size = max(node.size, size)
        node.mtime = node.ctime = time

    def _xattr(self, ino, name, value):
        node = self.inodes[ino]
        if value is None:
            del node.xattrs[name]
        else:
            node.xattrs[name] = value

    def _map(self, ino, file_offset, length, set_id, set_offset):
        self.inodes[ino].extents.add(file_offset, length, set_id, set_offset)
        if set_id not in self.snapsets and set_id != LOST:
            self.allocator.mark_used(set_id, set_offset, length)

    def _punch(self, ino, file_offset, length):
        self._free(self.inodes[ino].extents.punch(file_offset, file_offset + length))

    def _delete(self, ino):
        node = self.inodes.pop(ino)
        if node.extents is not None:
            self._free(node.extents.cut(0))

    def _set(self, set_id, size):
        self.allocator.add_set(set_id, size)

    def _format(self, scheme, chunk_size, set_size, codec):
        self.format = Format(scheme.decode(), chunk_size, set_size, codec.decode())

    def _next(self, next_ino):
        self.next_ino = max(self.next_ino, next_ino)

    def _snapset(self, set_id, size, snap_id):
        self.snapsets[set_id] = (size, snap_id)

    def _snapset_record(self, set_id, source, record):
        self.snapset_records[set_id] = (source, record)

    def _snapshot(self, snap_id, name, time, source, top, first, last, size, sources):
        ids = frozenset(int.from_bytes(sources[i:i + 8], "little")
                        for i in range(0, len(sources), 8))
        self.snapshots[snap_id] = SnapshotInfo(snap_id, name, time, source, top, first, last,
                                               size, ids)

    def _unsnapshot(self, snap_id):
        del self.snapshots[snap_id]
        for set_id in [k for k, (_, sid) in self.snapsets.items() if sid == snap_id]:
            del self.snapsets[set_id]
            self.snapset_records.pop(set_id, None)

    # -- checkpoints and comparisons ------------------------------------------------
    def checkpoint_records(self) -> Iterator[tuple]:
        """Records that rebuild this state from nothing.

        Call with no write in flight that has reserved space, and after the quarantine is
        released: reserved and quarantined space is written as free.
        """
        if self.format is not None:
            f = self.format
            yield Op.FORMAT, f.scheme.encode(), f.chunk_size, f.set_size, f.codec.encode()
        for set_id, size in self.allocator.set_sizes().items():
            yield Op.SET, set_id, size
        for set_id, (size, snap_id) in self.snapsets.items():
            yield Op.SNAPSET, set_id, size, snap_id
        for set_id, (source, record) in self.snapset_records.items():
            yield Op.SNAPSET_RECORD, set_id, source, record
        yield Op.NEXT, self.next_ino
        for n in self.inodes.values():
            yield (Op.INODE, n.ino, n.mode, n.uid, n.gid, n.rdev, n.size, n.atime, n.mtime,
                   n.ctime, n.nlink, n.target)
        for n in self.inodes.values():
            if n.dir is not None:
                for _, name, ino in n.dir.listing():
                    yield Op.DIRENT, n.ino, name, ino
            for name, value in n.xattrs.items():
                yield Op.XATTR, n.ino, name, value
            if n.extents is not None:
                for extent in n.extents:
                    yield (Op.MAP, n.ino, *extent)
        for i in self.snapshots.values():
            yield (Op.SNAPSHOT, i.snap_id, i.name, i.time, i.source, i.top, i.first, i.last,
                   i.size, b"".join(x.to_bytes(8, "little") for x in sorted(i.sources)))

    def snapshot(self) -> dict:
        """Everything that matters, as plain data: two states are equal if these are."""
        inodes = {}
        for n in self.inodes.values():
            inodes[n.ino] = (
                n.mode, n.uid, n.gid, n.rdev, n.size, n.atime, n.mtime, n.ctime, n.nlink,
                n.target, n.parent, dict(n.xattrs),
                [(name, ino) for _, name, ino in n.dir.listing()] if n.dir is not None else None,
                list(n.extents) if n.extents is not None else None)
        return {"inodes": inodes, "next_ino": self.next_ino, "format": self.format,
                "sets": self.allocator.set_sizes(), "free": self.allocator.free_ranges(),
                "snapsets": dict(self.snapsets), "snapshots": dict(self.snapshots),
                "snapset_records": dict(self.snapset_records)}


_APPLY = {
    Op.INODE: State._inode, Op.DIRENT: State._dirent, Op.LINK: State._link,
    Op.UNLINK: State._unlink, Op.RENAME: State._rename, Op.SETATTR: State._setattr,
    Op.WRITTEN: State._written, Op.XATTR: State._xattr, Op.MAP: State._map,
    Op.DELETE: State._delete, Op.SET: State._set, Op.NEXT: State._next,
    Op.FORMAT: State._format, Op.SNAPSET: State._snapset, Op.SNAPSHOT: State._snapshot,
    Op.UNSNAPSHOT: State._unsnapshot, Op.SNAPSET_RECORD: State._snapset_record,
    Op.PUNCH: State._punch,
}
