"""Snapshots of files and directory trees (issue 6): create, delete, restore, list.

The modules beside this one each have one job: ``snapshot_xattrs`` (the ``user.resilfs.*``
xattrs: commands and the report), ``snapshot_names`` (names, the ``.snapshots``
directory, which inodes are read-only), ``snapshot_trees`` (a tree captured and journaled
as the snapshot's copy; restore's live copy), ``kernel_cache`` (``syncfs`` and the
kernel's entries and attributes), ``snapshot_sets`` (the snapshot sets after the call),
and ``resilfs.sets.split_clone`` (a set split or cloned).

How a snapshot is taken (claims 9, 10, 18, 20): the kernel's dirty pages are written back
(``syncfs``: every write completed before the call is on the sets) and the daemon's
write-behind cache flushed and bypassed until the snapshot is taken, while every appliance
is asked for its STAT (liveness, free space); then every stripe of every set the tree uses
is locked (in-flight writes drain, new ones wait), the tree's metadata is captured, and
each set is snapshotted by ``resilfs.sets.split_clone``: a healthy mirror set of three or
more copies gives up a member region (it *is* the snapshot's data), other sets (mirror:2
among them, whose live data a split would leave on one copy) clone their members inside
the appliances. No file data crosses the network. The snapshot's inodes, its sets (with
their membership records) and a SNAPSHOT record are journaled in one commit; then the
split sets let go of their regions in memory and the locks are released, and the call
returns: the snapshot is durable. After the call, ``SnapshotSets`` stores the sets'
records on the appliances and has the rebuild worker restore the redundancy of both
halves of each split (a mount redoes what a crash interrupted). The snapshot sets are sets
of their own (ids from ``SNAPSET_BASE``, outside the allocator: never written); the copied
inodes map the same offsets in them.

Sets are shared by many files, so a snapshot set holds other files' bytes too; only the
copied inodes' extents are ever read from it. A split snapshot starts as one region per
set and gets the source's redundancy once the source set has its own back.

Every refusal (bad name, unknown name, path under ``.snapshots``, no room) is raised
before anything changed; a failure while taking the snapshot undoes what was done.
"""
import errno
import logging
import stat
from contextlib import AsyncExitStack

import trio

from ..sets import NoPlacement, SetError, split_clone
from ..transport.base import TransportError
from . import snapshot_xattrs as xattrs
from .backing import SetBacking, set_name
from .data import FileData
from .errors import DataUnavailable, FsError, NoSpace, refuse
from .journal import Journal
from .journal_records import Op
from .kernel_cache import KernelCache
from .metadata import Metadata, now_ns
from .snapshot_names import SnapshotNames, check_name
from .snapshot_sets import SnapshotSets
from .snapshot_trees import SnapshotTrees
from .state import ROOT_INODE, SnapshotInfo

log = logging.getLogger(__name__)

SNAPSET_BASE = 1 << 40  # snapshot set ids; data sets are numbered from 1
ATTEMPTS = 5  # the tree moved to other sets while locks were taken: look again
SETTLE_TIMEOUT = 60.0  # wait this long for a mirror set's rebuild, then clone it
HEALTH_ORDER = ["healthy", "pending", "rebuilding", "degraded", "unavailable"]


class Snapshots:
    """Create, list, delete and restore snapshots; answer which inodes are read-only."""

    def __init__(self, metadata: Metadata, data: FileData, backing: SetBacking,
                 journal: Journal, mountpoint: str | None = None):
        self.metadata = metadata
        self.state = metadata.state
        self.data = data
        self.backing = backing
        self.journal = journal
        self.kernel = KernelCache(mountpoint)  # no mountpoint: no kernel (unit tests)
        self.names = SnapshotNames(self.state)
        self.trees = SnapshotTrees(metadata, data, backing, journal, self.names)
        self._lock = trio.Lock()
        self._phases: dict[str, float] = {}  # seconds per step of the last create (log)
        # the snapshot sets after the call: records, redundancy; run() by the mount
        self.sets = SnapshotSets(backing, self.state, self._lock)

    # -- the read-only view ------------------------------------------------------------
    def directory(self) -> int | None:
        """The inode of ``.snapshots`` (made by the first snapshot), or None."""
        return self.names.directory()

    def frozen(self, ino: int, name: bytes | None = None) -> bool:
        """Whether changing inode ``ino`` (or its entry ``name``) touches the read-only view."""
        return self.names.frozen(ino, name)

    def by_name(self, name: bytes) -> SnapshotInfo | None:
        return self.names.by_name(name)

    # -- the xattr interface --------------------------------------------------------------
    async def get(self, ino: int, name: bytes) -> bytes:
        xattrs.check_report(name)
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
        return xattrs.encode_listing(out)

    def _health(self, snap_id: int) -> str:
        """The worst state of the snapshot's sets: "pending" for a set not opened yet (a
        split one is a single copy until then), else the set's status (healthy,
        rebuilding, degraded, unavailable)."""
        opened = self.backing.sets()
        states = ["pending" if set_id not in opened else opened[set_id].status().state
                  for set_id, (_, sid) in self.state.snapsets.items() if sid == snap_id]
        return max(states, key=HEALTH_ORDER.index, default="healthy")

    async def set(self, ino: int, name: bytes, value: bytes) -> None:
        action = xattrs.command(name)
        if action == "create":
            await self.create(ino, value)
        elif action == "delete":
            await self.delete(value)
        else:
            await self.restore(ino, value)

    # -- create -----------------------------------------------------------------------------
    async def create(self, ino: int, name: bytes) -> SnapshotInfo:
        """Snapshot the file or tree at ``ino`` as ``name`` (see the module docstring)."""
        name = check_name(name)
        async with self._lock:
            if self.by_name(name) is not None:
                raise refuse(errno.EEXIST, f"a snapshot named {name!r} exists")
            node = self.metadata.inode(ino)
            if self.frozen(ino):
                raise refuse(errno.EINVAL, "cannot snapshot what is under .snapshots")
            if not (stat.S_ISREG(node.mode) or stat.S_ISDIR(node.mode)):
                raise refuse(errno.EINVAL, "only files and directories can be snapshotted")
            started = trio.current_time()
            survey = split_clone.Survey(self.backing.pool)
            async with trio.open_nursery() as nursery:  # independent: together
                nursery.start_soon(survey.refresh)
                await self.kernel.flush()
            self._phases = {"flush+survey": trio.current_time() - started}
            # every write on the sets (none waiting in the daemon): quiescing stops them all
            async with self.data.writing_through():
                for _ in range(ATTEMPTS):
                    info = await self._attempt(ino, name, survey)
                    if info is not None:
                        return info
                raise refuse(errno.EAGAIN, "the tree kept changing sets; try again")

    async def _attempt(self, ino: int, name: bytes,
                       survey: split_clone.Survey) -> SnapshotInfo | None:
        set_ids = sorted(self.trees.sets_of(ino))
        try:
            sets = [await self.backing.get(i) for i in set_ids]
        except DataUnavailable as exc:
            raise refuse(errno.EIO, f"cannot snapshot: {exc}") from None
        await _each(lambda s: split_clone.settle(s, SETTLE_TIMEOUT), sets)
        base = max(self.state.snapsets, default=SNAPSET_BASE - 1) + 1
        new_ids = {old: base + k for k, old in enumerate(set_ids)}
        snaps: list[split_clone.SetSnapshot] = []
        phases, t = self._phases, trio.current_time()

        def phase(what: str) -> None:
            nonlocal t
            now = trio.current_time()
            phases[what] = phases.get(what, 0.0) + now - t
            t = now

        async with AsyncExitStack() as stack:
            try:
                for s in sets:  # ascending set ids: quiescers never deadlock
                    await stack.enter_async_context(split_clone.quiesce(s))
                phase("quiesce")
                if ino not in self.state.inodes:
                    raise refuse(errno.ENOENT, "the file was removed")
                if sorted(self.trees.sets_of(ino)) != set_ids:
                    return None
                snaps = await split_clone.prepare(sets, [set_name(new_ids[i]) for i in set_ids],
                                              survey)
                phase("prepare")
                tree = self.trees.capture(ino)  # the snapshot's instant: no write in flight
                await _each(split_clone.take, snaps)
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
            info = self.trees.record(name, ino, tree, {
                new_ids[old]: (old, s.size, snap.membership.to_bytes())
                for old, s, snap in zip(set_ids, sets, snaps, strict=True)})
            phase("record")
            try:
                await self.journal.commit()
                phase("commit")
                self.kernel.invalidate_attrs(self.directory())
            finally:  # even if the commit failed: the records are applied and stay queued
                for old, s, snap in zip(set_ids, sets, snaps, strict=True):
                    split_clone.detach(snap)  # no await from here to the release and return:
                    self.sets.adopt(new_ids[old], old, s, split_clone.snapshot_set(snap))
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
                await split_clone.undo(snap)

    # -- delete -----------------------------------------------------------------------------
    async def delete(self, name: bytes) -> None:
        """Delete snapshot ``name``: its inodes, then (once durable) its sets' regions."""
        name = check_name(name)
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
        self.kernel.invalidate_entry(folder, name)
        self.kernel.invalidate_attrs(folder)

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
        name = check_name(name)
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
            parent, entry = self.trees.locate(node)
            await self.kernel.flush()
            temp = b".resilfs-restore-%d" % self.state.next_ino
            try:
                await self.trees.copy_live(info.top, parent, temp, {})
            except BaseException:
                with trio.CancelScope(shield=True):
                    if self.state.inodes[parent].dir.get(temp) is not None:
                        self.trees.remove(parent, temp)
                raise
            # no await from here to the rename: the swap is one step for other requests
            if self.state.inodes[parent].dir.get(entry) is not None:
                old = self.metadata.child(parent, entry)
                if old.dir is not None:
                    for _, n, _ in list(old.dir.listing()):
                        self.trees.remove(old.ino, n)
            self.metadata.rename(parent, temp, parent, entry)
            await self.journal.commit()
            log.info("snapshot %r restored onto inode %d (now inode %d)", name, ino,
                     self.state.inodes[parent].dir.get(entry))
        await self.kernel.invalidate_entry_now(parent, entry)
        self.kernel.invalidate_attrs(parent)


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
