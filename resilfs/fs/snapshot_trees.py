"""The trees snapshots copy, as metadata: the inodes of a tree, captured as plain data and
journaled as the snapshot's copy (its extents mapped into the snapshot's sets); and, for a
restore, a live copy of a snapshot's tree (data copied through the client) and the removal
of a live tree.

``capture`` and ``record`` have no await: a tree is captured at one instant and its copy
goes into the journal between other requests. ``copy_live`` awaits data reads and writes;
a failure (DataUnavailable, NoSpace) leaves a partial copy that the caller removes.
"""
import errno
import stat

from .backing import SetBacking
from .data import FileData
from .errors import LostData, refuse
from .extents import LOST
from .journal import Journal
from .journal_records import ATTR_CTIME, Op
from .metadata import Metadata, now_ns
from .snapshot_names import DIR_NAME, SnapshotNames
from .state import ROOT_INODE, SnapshotInfo

COPY_CHUNK = 1 << 20  # bytes a restore copies per read and write


class SnapshotTrees:
    """Copies of trees between the live filesystem and its snapshots."""

    def __init__(self, metadata: Metadata, data: FileData, backing: SetBacking,
                 journal: Journal, names: SnapshotNames):
        self.metadata = metadata
        self.state = metadata.state
        self.data = data
        self.backing = backing
        self.journal = journal
        self.names = names

    # -- a snapshot's copy ------------------------------------------------------------------
    def walk(self, ino: int):
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

    def sets_of(self, ino: int) -> set[int]:
        """The data sets the tree at ``ino`` has extents on."""
        return {e[2] for node in self.walk(ino) if node.extents is not None
                for e in node.extents if e[2] != LOST}

    def capture(self, ino: int) -> list[tuple]:
        """The tree as plain data: (inode, attributes, xattrs, extents, children)."""
        tree = []
        for n in self.walk(ino):
            children = None
            if n.dir is not None:
                children = [(name, child) for _, name, child in n.dir.listing()
                            if not (n.ino == ROOT_INODE and name == DIR_NAME)]
            tree.append(((n.ino, n.mode, n.uid, n.gid, n.rdev, n.size, n.atime, n.mtime,
                          n.ctime, n.target), dict(n.xattrs),
                         list(n.extents) if n.extents is not None else None, children))
        return tree

    def record(self, name: bytes, source: int, tree,
               snapsets: dict[int, tuple[int, int, bytes]]) -> SnapshotInfo:
        """Journal the snapshot: its sets (``{new set id: (source set id, size, membership
        record)}``), a copy of every inode (extents mapped to the new sets), the SNAPSHOT
        record.

        No await: the records go in together, between other requests.
        """
        record = self.journal.record
        t = now_ns()
        folder = self.names.ensure_directory(self.journal, t)
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

    # -- restore ------------------------------------------------------------------------------
    def locate(self, node) -> tuple[int, bytes]:
        """(parent, name) of a live inode: a directory's parent, or the first directory
        found naming a file. ENOENT if none does."""
        parents = [node.parent] if node.dir is not None else [
            n.ino for n in self.state.inodes.values()
            if n.dir is not None and not self.names.frozen(n.ino)]
        for p in parents:
            for _, n, i in self.state.inodes[p].dir.listing():
                if i == node.ino and not (p == ROOT_INODE and n == DIR_NAME):
                    return p, n
        raise refuse(errno.ENOENT, "the path was removed")

    async def copy_live(self, snap: int, parent: int, name: bytes, made: dict) -> int:
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
                await self.copy_live(child, ino, n, made)
        for key, value in s.xattrs.items():
            self.journal.record((Op.XATTR, ino, key, value))
        self.metadata.setattr(ino, mode=s.mode & 0o7777, uid=s.uid, gid=s.gid,
                              atime=s.atime, mtime=s.mtime)
        return ino

    def remove(self, parent: int, name: bytes) -> None:
        """Remove the live tree ``name`` of ``parent`` (no await)."""
        node = self.metadata.child(parent, name)
        if node.dir is not None:
            for _, n, _ in list(node.dir.listing()):
                self.remove(node.ino, n)
            self.metadata.rmdir(parent, name)
        else:
            self.metadata.unlink(parent, name)
