"""Snapshot names and where snapshots appear: a checked name, the snapshot a name stands
for, the read-only ``.snapshots`` directory in the mount's root, and which inodes belong
to the read-only view. No I/O; a bad name is refused with EINVAL before anything changes.
"""
import errno
import stat

from .errors import refuse
from .journal import Journal
from .journal_records import Op
from .metadata import NAME_MAX
from .state import ROOT_INODE, SnapshotInfo, State

DIR_NAME = b".snapshots"  # reserved in the mount's root


def check_name(value: bytes) -> bytes:
    """``value`` as a snapshot name: one path component, 1 to NAME_MAX bytes, not ``.`` or
    ``..``; EINVAL otherwise."""
    name = bytes(value)
    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise refuse(errno.EINVAL, f"invalid snapshot name {name!r}")
    if len(name) > NAME_MAX:
        raise refuse(errno.EINVAL, "snapshot name too long")
    return name


class SnapshotNames:
    """The snapshots of ``state`` by name, and their read-only view."""

    def __init__(self, state: State):
        self.state = state

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

    def ensure_directory(self, journal: Journal, t: int) -> int:
        """The inode of ``.snapshots``, recorded in ``journal`` (time ``t``) if it is the
        first snapshot's. No await."""
        folder = self.directory()
        if folder is None:
            folder = self.state.next_ino
            root = self.state.inodes[ROOT_INODE]
            journal.record((Op.INODE, folder, stat.S_IFDIR | 0o555, root.uid, root.gid,
                            0, 0, t, t, t, 0, None))
            journal.record((Op.LINK, ROOT_INODE, DIR_NAME, folder, t))
        return folder
