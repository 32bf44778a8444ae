"""Snapshots of files and directory trees, through ``user.resilfs.*`` xattrs (issue 6).

* ``setxattr(PATH, user.resilfs.snapshot, NAME)``: snapshot PATH (a file, or a directory and
  everything below it) as NAME; the copy appears read-only as ``MOUNT/.snapshots/NAME``.
* ``getxattr(PATH, user.resilfs.snapshots)``: JSON list of the snapshots that include PATH
  (all of them on the mount's root): name, time, size, type, files, health.
* ``setxattr(ANY, user.resilfs.snapshot.delete, NAME)``: delete it and free its regions.
* ``setxattr(PATH, user.resilfs.snapshot.restore, NAME)``: make PATH as it was.

How a snapshot is taken (claims 9, 10, 18, 20): the kernel's dirty pages are written back
(``syncfs``: every write completed before the call is on the sets) and the daemon's
write-behind cache flushed and bypassed until the snapshot is taken, while every appliance
is asked for its STAT (liveness, free space); then every stripe of every set the tree uses
is locked (in-flight writes drain, new ones wait), the tree's metadata is captured, and
each set is snapshotted by ``resilfs.sets.snapshot``: a healthy mirror set gives up a
member region (it *is* the snapshot's data), other sets clone their members inside the
appliances. No file data crosses the network. The snapshot's inodes, its sets (with their
membership records) and a SNAPSHOT record are journaled in one commit; then the split
sets let go of their regions in memory and the locks are released, and the call returns:
the snapshot is durable, and the time does not grow with the number of sets. After the
call, ``SnapshotSets`` stores the sets' records on the appliances and has the rebuild
worker restore the redundancy of both halves of each split (a mount redoes what a crash
interrupted). The snapshot sets are sets of their own (ids from ``SNAPSET_BASE``, outside
the allocator: never written); the copied inodes map the same offsets in them.

Sets are shared by many files, so a snapshot set holds other files' bytes too; only the
copied inodes' extents are ever read from it. A split snapshot starts as one region per
set and gets the source's redundancy once the source set has its own back.

Every refusal (bad name, unknown name, path under ``.snapshots``, no room) is raised
before anything changed; a failure while taking the snapshot undoes what was done.
"""
import ctypes
import errno
import json
import logging
import os
import stat
from contextlib import AsyncExitStack

import pyfuse3
import trio

from ..sets import NoPlacement, SetError
from ..sets import snapshot as setsnap
from ..transport.base import TransportError
from .backing import SetBacking, set_name
from .data import FileData
from .errors import DataUnavailable, FsError, LostData, NoSpace, refuse
from .extents import LOST
from .journal import Journal
from .metadata import NAME_MAX, Metadata, now_ns
from .records import ATTR_CTIME, Op
from .snapshot_sets import SnapshotSets
from .state import ROOT_INODE, SnapshotInfo

log = logging.getLogger(__name__)

SNAPSHOT = b"user.resilfs.snapshot"
LIST = b"user.resilfs.snapshots"
DELETE = b"user.resilfs.snapshot.delete"
RESTORE = b"user.resilfs.snapshot.restore"
NAMES = frozenset((SNAPSHOT, LIST, DELETE, RESTORE))
DIR_NAME = b".snapshots"
SNAPSET_BASE = 1 << 40  # snapshot set ids; data sets are numbered from 1
COPY_CHUNK = 1 << 20
ATTEMPTS = 5  # the tree moved to other sets while locks were taken: look again
SETTLE_TIMEOUT = 60.0  # wait this long for a mirror set's rebuild, then clone it
HEALTH_ORDER = ["healthy", "pending", "rebuilding", "degraded", "unavailable"]

_libc = ctypes.CDLL(None, use_errno=True)


def _syncfs(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    finally:
        os.close(fd)


class Snapshots:
    """Create, list, delete and restore snapshots; answer which inodes are read-only."""

    def __init__(self, metadata: Metadata, data: FileData, backing: SetBacking,
                 journal: Journal, mountpoint: str | None = None):
        self.metadata = metadata
        self.state = metadata.state
        self.data = data
        self.backing = backing
        self.journal = journal
        self.mountpoint = mountpoint  # None: no kernel to flush or invalidate (unit tests)
        self._lock = trio.Lock()
        self._phases: dict[str, float] = {}  # seconds per step of the last create (log)
        # the snapshot sets after the call: records, redundancy; run() by the mount
        self.sets = SnapshotSets(backing, self.state, self._lock)

    # -- the read-only view ------------------------------------------------------------
    def directory(self) -> int | None:
        """The inode of ``.snapshots`` (made by the first snapshot), or None."""
        return self.state.inodes[ROOT_INODE].dir.get(DIR_NAME)

    def frozen(self, ino: int, name: bytes | None = None) -> bool:
        """Whether changing inode ``ino`` (or its entry ``name``) touches the read-only view."""
        if ino == ROOT_INODE:
            return name == DIR_NAME
        if ino == self.directory():
            return True
        return any(i.first <= ino <= i.last for i in self.state.snapshots.values())

    def by_name(self, name: bytes) -> SnapshotInfo | None:
        for info in self.state.snapshots.values():
            if info.name == name:
                return info
        return None

    # -- the xattr interface --------------------------------------------------------------
    async def get(self, ino: int, name: bytes) -> bytes:
        if name != LIST:
            raise refuse(errno.EINVAL, f"{name!r} is a command, not a report")
        node = self.metadata.inode(ino)
        out = []
        for i in sorted(self.state.snapshots.values(), key=lambda i: (i.time, i.snap_id)):
            if ino == ROOT_INODE or ino in i.sources or i.first <= node.ino <= i.last:
                top = self.state.inodes.get(i.top)
                out.append({"name": i.name.decode(errors="surrogateescape"),
                            "time": i.time / 1e9, "size": i.size,
                            "type": "directory" if top is not None and top.dir is not None
                            else "file", "files": len(i.sources),
                            "health": self._health(i.snap_id)})
        return json.dumps(out).encode()

    def _health(self, snap_id: int) -> str:
        """The worst state of the snapshot's sets: "pending" for a set not opened yet (a
        split one is a single copy until then), else the set's status (healthy,
        rebuilding, degraded, unavailable)."""
        opened = self.backing.sets()
        states = ["pending" if set_id not in opened else opened[set_id].status().state
                  for set_id, (_, sid) in self.state.snapsets.items() if sid == snap_id]
        return max(states, key=HEALTH_ORDER.index, default="healthy")

    async def set(self, ino: int, name: bytes, value: bytes) -> None:
        if name == SNAPSHOT:
            await self.create(ino, value)
        elif name == DELETE:
            await self.delete(value)
        elif name == RESTORE:
            await self.restore(ino, value)
        else:
            raise refuse(errno.EINVAL, f"{name!r} is a report, not a command")

    # -- create -----------------------------------------------------------------------------
    async def create(self, ino: int, name: bytes) -> SnapshotInfo:
        """Snapshot the file or tree at ``ino`` as ``name`` (see the module docstring)."""
        name = _check_name(name)
        async with self._lock:
            if self.by_name(name) is not None:
                raise refuse(errno.EEXIST, f"a snapshot named {name!r} exists")
            node = self.metadata.inode(ino)
            if self.frozen(ino):
                raise refuse(errno.EINVAL, "cannot snapshot what is under .snapshots")
            if not (stat.S_ISREG(node.mode) or stat.S_ISDIR(node.mode)):
                raise refuse(errno.EINVAL, "only files and directories can be snapshotted")
            started = trio.current_time()
            survey = setsnap.Survey(self.backing.pool)
            async with trio.open_nursery() as nursery:  # independent: together
                nursery.start_soon(survey.refresh)
                await self._flush()
            self._phases = {"flush+survey": trio.current_time() - started}
            # every write on the sets (none waiting in the daemon): quiescing stops them all
            async with self.data.writing_through():
                for _ in range(ATTEMPTS):
                    info = await self._attempt(ino, name, survey)
                    if info is not None:
                        return info
                raise refuse(errno.EAGAIN, "the tree kept changing sets; try again")

    async def _attempt(self, ino: int, name: bytes,
                       survey: setsnap.Survey) -> SnapshotInfo | None:
        set_ids = sorted(self._sets_of(ino))
        try:
            sets = [await self.backing.get(i) for i in set_ids]
        except DataUnavailable as exc:
            raise refuse(errno.EIO, f"cannot snapshot: {exc}") from None
        await _each(lambda s: setsnap.settle(s, SETTLE_TIMEOUT), sets)
        base = max(self.state.snapsets, default=SNAPSET_BASE - 1) + 1
        new_ids = {old: base + k for k, old in enumerate(set_ids)}
        snaps: list[setsnap.SetSnapshot] = []
        phases, t = self._phases, trio.current_time()

        def phase(what: str) -> None:
            nonlocal t
            now = trio.current_time()
            phases[what] = phases.get(what, 0.0) + now - t
            t = now

        async with AsyncExitStack() as stack:
            try:
                for s in sets:  # ascending set ids: quiescers never deadlock
                    await stack.enter_async_context(setsnap.quiesce(s))
                phase("quiesce")
                if ino not in self.state.inodes:
                    raise refuse(errno.ENOENT, "the file was removed")
                if sorted(self._sets_of(ino)) != set_ids:
                    return None
                snaps = await setsnap.prepare(sets, [set_name(new_ids[i]) for i in set_ids],
                                              survey)
                phase("prepare")
                tree = self._capture(ino)  # the snapshot's instant: no write in flight
                await _each(setsnap.take, snaps)
                phase("take")
            except NoPlacement as exc:
                await self._undo(snaps)
                raise NoSpace(f"no room for snapshot {name!r}: {exc}") from None
            except (SetError, TransportError) as exc:
                await self._undo(snaps)
                raise refuse(errno.EIO, f"snapshot {name!r} failed: {exc}") from None
            except BaseException:
                await self._undo(snaps)
                raise
            info = self._record(name, ino, tree, {
                new_ids[old]: (old, s.size, snap.membership.to_bytes())
                for old, s, snap in zip(set_ids, sets, snaps, strict=True)})
            phase("record")
            try:
                await self.journal.commit()
                phase("commit")
                self._invalidate_attrs(self.directory())
            finally:  # even if the commit failed: the records are applied and stay queued
                for old, s, snap in zip(set_ids, sets, snaps, strict=True):
                    setsnap.detach(snap)  # no await from here to the release and return:
                    self.sets.adopt(new_ids[old], old, s, setsnap.snapshot_set(snap))
        phase("release")  # background work (rebuilds, records) starts after the reply
        log.info("snapshot %s of inode %d: %d inodes, %d bytes, sets %s (%s); %s", name, ino,
                 info.last - info.first + 1, info.size, set_ids,
                 ", ".join(f"{s.source.set_id}: {s.method}" for s in snaps),
                 " ".join(f"{k} {v * 1000:.1f}ms" for k, v in phases.items()))
        return info

    @staticmethod
    async def _undo(snaps) -> None:
        with trio.CancelScope(shield=True):
            for snap in snaps:
                await setsnap.undo(snap)

    def _walk(self, ino: int):
        """The inodes of the tree at ``ino`` (``.snapshots`` left out), each once."""
        seen, stack = set(), [ino]
        while stack:
            node = self.state.inodes[stack.pop()]
            if node.ino in seen:
                continue
            seen.add(node.ino)
            yield node
            if node.dir is not None:
                for _, child_name, child in node.dir.listing():
                    if not (node.ino == ROOT_INODE and child_name == DIR_NAME):
                        stack.append(child)

    def _sets_of(self, ino: int):
        return {e[2] for node in self._walk(ino) if node.extents is not None
                for e in node.extents if e[2] != LOST}

    def _capture(self, ino: int) -> list[tuple]:
        """The tree as plain data: (inode, attributes, xattrs, extents, children)."""
        tree = []
        for n in self._walk(ino):
            children = None
            if n.dir is not None:
                children = [(name, child) for _, name, child in n.dir.listing()
                            if not (n.ino == ROOT_INODE and name == DIR_NAME)]
            tree.append(((n.ino, n.mode, n.uid, n.gid, n.rdev, n.size, n.atime, n.mtime,
                          n.ctime, n.target), dict(n.xattrs),
                         list(n.extents) if n.extents is not None else None, children))
        return tree

    def _record(self, name: bytes, source: int, tree,
                snapsets: dict[int, tuple[int, int, bytes]]) -> SnapshotInfo:
        """Journal the snapshot: its sets (``{new set id: (source set id, size, membership
        record)}``), a copy of every inode (extents mapped to the new sets), the SNAPSHOT
        record.

        No await: the records go in together, between other requests.
        """
        record = self.journal.record
        t = now_ns()
        folder = self._ensure_directory(t)
        snap_id = max(self.state.snapshots, default=0) + 1
        new_ids = {old: set_id for set_id, (old, _, _) in snapsets.items()}
        for set_id, (old, size, membership) in sorted(snapsets.items()):
            record((Op.SNAPSET, set_id, size, snap_id))
            record((Op.SNAPSET_RECORD, set_id, old, membership))
        first = self.state.next_ino
        new = {entry[0][0]: first + k for k, entry in enumerate(tree)}
        names = {}
        for _, _, _, children in tree:
            for _, child in children or ():
                names[child] = names.get(child, 0) + 1
        size = 0
        for (ino, mode, uid, gid, rdev, sz, atime, mtime, ctime, target), _, _, children \
                in tree:
            if children is not None:
                nlink = 2 + sum(1 for _, c in children
                                if stat.S_ISDIR(self.state.inodes[c].mode))
            else:
                nlink = names.get(ino, 0) + (ino == source)
                size += sz
            if ino == source:
                nlink -= 2 if children is not None else 1  # the LINK below adds them
            record((Op.INODE, new[ino], mode, uid, gid, rdev, sz, atime, mtime, ctime, nlink,
                    target))
        for (ino, *_), xattrs, extents, children in tree:
            for key, value in xattrs.items():
                record((Op.XATTR, new[ino], key, value))
            for child_name, child in children or ():
                record((Op.DIRENT, new[ino], child_name, new[child]))
            for f, n, set_id, o in extents or ():
                record((Op.MAP, new[ino], f, n, LOST if set_id == LOST else new_ids[set_id], o))
        record((Op.LINK, folder, name, new[source], t))
        ctime = tree[0][0][8]
        record((Op.SETATTR, new[source], ATTR_CTIME, 0, 0, 0, 0, 0, 0, ctime))
        sources = b"".join(ino.to_bytes(8, "little") for ino in sorted(new))
        record((Op.SNAPSHOT, snap_id, name, t, source, new[source], first,
                first + len(tree) - 1, size, sources))
        return self.state.snapshots[snap_id]

    def _ensure_directory(self, t: int) -> int:
        folder = self.directory()
        if folder is None:
            folder = self.state.next_ino
            root = self.state.inodes[ROOT_INODE]
            self.journal.record((Op.INODE, folder, stat.S_IFDIR | 0o555, root.uid, root.gid,
                                 0, 0, t, t, t, 0, None))
            self.journal.record((Op.LINK, ROOT_INODE, DIR_NAME, folder, t))
        return folder

    # -- delete -----------------------------------------------------------------------------
    async def delete(self, name: bytes) -> None:
        """Delete snapshot ``name``: its inodes, then (once durable) its sets' regions."""
        name = _check_name(name)
        async with self._lock:
            info = self.by_name(name)
            if info is None:
                raise refuse(errno.ENOENT, f"no snapshot named {name!r}")
            folder = self.directory()
            set_ids = sorted(k for k, (_, sid) in self.state.snapsets.items()
                             if sid == info.snap_id)
            await self.sets.store_now(set_ids)  # the sources stop naming the regions first
            self.journal.record((Op.UNLINK, folder, name, now_ns()))
            for ino in range(info.first, info.last + 1):
                if ino in self.state.inodes:
                    self.journal.record((Op.DELETE, ino))
            self.journal.record((Op.UNSNAPSHOT, info.snap_id))
            await self.journal.commit()
            for set_id in set_ids:
                try:
                    await self.backing.destroy_set(set_id)
                except FsError as exc:
                    log.warning("snapshot %r: could not free set %d: %s", name, set_id, exc)
            log.info("snapshot %r deleted (%d sets freed)", name, len(set_ids))
        self._invalidate_entry(folder, name)
        self._invalidate_attrs(folder)

    # -- restore ----------------------------------------------------------------------------
    async def restore(self, ino: int, name: bytes) -> None:
        """Put the file or tree at ``ino`` back as snapshot ``name`` has it.

        The copy is built as new inodes under a temporary name beside PATH (the data is
        copied from the snapshot's sets), then replaces PATH in one step; the kernel's
        entry for PATH is invalidated, so the next lookup finds the restored inode. (With
        the writeback cache the kernel trusts its own size and times of an inode it
        knows, so the old inode cannot be changed in place.) Processes that have the old
        file open keep reading the old one, as after ``mv``. Not onto the mount's root.
        """
        name = _check_name(name)
        async with self._lock:
            info = self.by_name(name)
            if info is None:
                raise refuse(errno.ENOENT, f"no snapshot named {name!r}")
            node = self.metadata.inode(ino)
            if self.frozen(ino):
                raise refuse(errno.EINVAL, "cannot restore onto .snapshots")
            if ino == ROOT_INODE:
                raise refuse(errno.EINVAL, "cannot restore onto the mount's root; restore "
                             "a directory below it")
            top = self.state.inodes[info.top]
            if stat.S_IFMT(node.mode) != stat.S_IFMT(top.mode):
                raise refuse(errno.EINVAL, f"snapshot {name!r} is a "
                             f"{'directory' if top.dir is not None else 'file'}; the path "
                             f"is not")
            parent, entry = self._locate(node)
            await self._flush()
            temp = b".resilfs-restore-%d" % self.state.next_ino
            try:
                await self._copy_tree(info.top, parent, temp, {})
            except BaseException:
                with trio.CancelScope(shield=True):
                    if self.state.inodes[parent].dir.get(temp) is not None:
                        self._remove_tree(parent, temp)
                raise
            # no await from here to the rename: the swap is one step for other requests
            if self.state.inodes[parent].dir.get(entry) is not None:
                old = self.metadata.child(parent, entry)
                if old.dir is not None:
                    for _, n, _ in list(old.dir.listing()):
                        self._remove_tree(old.ino, n)
            self.metadata.rename(parent, temp, parent, entry)
            await self.journal.commit()
            log.info("snapshot %r restored onto inode %d (now inode %d)", name, ino,
                     self.state.inodes[parent].dir.get(entry))
        await self._invalidate_entry_now(parent, entry)
        self._invalidate_attrs(parent)

    def _locate(self, node) -> tuple[int, bytes]:
        """(parent, name) of a live inode: a directory's parent, or the first directory
        found naming a file."""
        parents = [node.parent] if node.dir is not None else [
            n.ino for n in self.state.inodes.values()
            if n.dir is not None and not self.frozen(n.ino)]
        for p in parents:
            for _, n, i in self.state.inodes[p].dir.listing():
                if i == node.ino and not (p == ROOT_INODE and n == DIR_NAME):
                    return p, n
        raise refuse(errno.ENOENT, "the path was removed")

    async def _copy_tree(self, snap: int, parent: int, name: bytes, made: dict) -> int:
        """Make a live copy of snapshot inode ``snap`` as ``name`` in ``parent``."""
        s = self.state.inodes[snap]
        if snap in made:  # a hard link inside the snapshot
            return self.metadata.link(made[snap], parent, name).ino
        ino = self.metadata.create(parent, name, s.mode, s.uid, s.gid, s.rdev, s.target).ino
        made[snap] = ino
        if s.extents is not None:
            for f, n, set_id, o in list(s.extents):
                if set_id == LOST:
                    raise LostData(f"snapshot inode {snap}: the data at {f} was lost")
                for pos in range(f, f + n, COPY_CHUNK):
                    buf = bytearray(min(COPY_CHUNK, f + n - pos))
                    await self.backing.read_into(set_id, o + pos - f, buf)
                    await self.data.write(ino, pos, buf)
            await self.data.truncate(ino, s.size)
        elif s.dir is not None:
            for _, n, child in list(s.dir.listing()):
                await self._copy_tree(child, ino, n, made)
        for key, value in s.xattrs.items():
            self.journal.record((Op.XATTR, ino, key, value))
        self.metadata.setattr(ino, mode=s.mode & 0o7777, uid=s.uid, gid=s.gid,
                              atime=s.atime, mtime=s.mtime)
        return ino

    def _remove_tree(self, parent: int, name: bytes) -> None:
        node = self.metadata.child(parent, name)
        if node.dir is not None:
            for _, n, _ in list(node.dir.listing()):
                self._remove_tree(node.ino, n)
            self.metadata.rmdir(parent, name)
        else:
            self.metadata.unlink(parent, name)

    # -- the kernel ---------------------------------------------------------------------------
    async def _flush(self) -> None:
        """Write back the kernel's dirty pages (writeback cache, mmap) to the sets."""
        if self.mountpoint is None:
            return
        try:
            await trio.to_thread.run_sync(_syncfs, self.mountpoint)
        except OSError as exc:
            log.warning("syncfs %s: %s", self.mountpoint, exc)

    def _invalidate_attrs(self, ino: int | None) -> None:
        """Drop the kernel's attributes of directory ``ino``. In this thread: only data
        invalidation can block (on writeback), and a directory's attributes have none."""
        if self.mountpoint is None or ino is None:
            return
        try:
            pyfuse3.invalidate_inode(ino, True)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning("could not invalidate inode %d: %s", ino, exc)

    async def _invalidate_entry_now(self, parent: int, name: bytes) -> None:
        """Drop the kernel's entry and wait for it (the request's own inode is locked by
        the kernel, its parent is not: no deadlock)."""
        if self.mountpoint is None:
            return
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_entry, parent, name)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning("could not invalidate entry %r of %d: %s", name, parent, exc)

    def _invalidate_entry(self, parent: int | None, name: bytes) -> None:
        if self.mountpoint is not None and parent is not None:
            pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)


async def _each(fn, items) -> None:
    """``await fn(item)`` for every item concurrently (sets are independent). If any raise,
    the first error is raised after all finished (the caller then undoes them all)."""
    errors: list[BaseException] = []

    async def one(item):
        try:
            await fn(item)
        except Exception as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for item in items:
            nursery.start_soon(one, item)
    if errors:
        raise errors[0]


def _check_name(value: bytes) -> bytes:
    name = bytes(value)
    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise refuse(errno.EINVAL, f"invalid snapshot name {name!r}")
    if len(name) > NAME_MAX:
        raise refuse(errno.EINVAL, "snapshot name too long")
    return name
