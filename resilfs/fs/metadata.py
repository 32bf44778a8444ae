"""The namespace operations: check a change, record it in the journal, report the result.

Every method validates against the current state and either raises FsError (nothing
changed) or records the change through ``Journal.record`` (which applies it). Methods
never await, so each one is atomic with respect to other requests.

Fields a user controls are checked where they are set, against the ranges the records
can store (``journal_records.I64_MIN`` ...): timestamps are signed 64-bit nanoseconds since 1970
(1677-09-21 to 2262-04-11; beyond: EOVERFLOW), sizes at most 2**63 - 1 (EFBIG), modes,
uids, gids 32-bit and device numbers 64-bit (EINVAL), names at most 255 bytes and symlink
targets 4095 (ENAMETOOLONG), xattr names 255 bytes (ERANGE) and values 64 KiB (E2BIG).

Inodes stay alive while the kernel knows them (lookup counts, ``forget``) or a file handle
is open, even with no name left (unlink of an open file); when the last reference goes,
a DELETE record frees them. Mounting deletes inodes left nameless by a crash.
"""
import errno
import logging
import stat
import time

from .errors import FsError, refuse
from .extents import LOST
from .journal import Journal
from .journal_records import (
    ATTR_ATIME,
    ATTR_CTIME,
    ATTR_GID,
    ATTR_MODE,
    ATTR_MTIME,
    ATTR_SIZE,
    ATTR_UID,
    I64_MAX,
    I64_MIN,
    U32_MAX,
    U64_MAX,
    Op,
)
from .state import ROOT_INODE, Inode

log = logging.getLogger(__name__)

NAME_MAX = 255
SYMLINK_MAX = 4095
XATTR_NAME_MAX = 255
SYMLINK_MAX = 4095
XATTR_SIZE_MAX = 65536
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def now_ns() -> int:
    return time.time_ns()


def _check_time(value) -> None:
    if value is not None and not I64_MIN <= value <= I64_MAX:
        raise refuse(errno.EOVERFLOW, f"timestamp {value} ns is outside the storable range "
                                      f"(signed 64-bit nanoseconds since 1970)")


def _check_u32(what: str, value) -> None:
    if value is not None and not 0 <= value <= U32_MAX:
        raise refuse(errno.EINVAL, f"{what} {value} does not fit 32 bits")


class Metadata:
    """Namespace operations over a journaled ``State``."""

    def __init__(self, journal: Journal):
        self.journal = journal
        self.state = journal.state
        self._lookups: dict[int, int] = {}
        self._opens: dict[int, int] = {}

    @staticmethod
    def format(journal: Journal, uid: int, gid: int, mode: int = 0o755, *,
               scheme: str = "mirror:2", chunk_size: int = 64 * 1024,
               set_size: int = 256 << 20, codec: str = "mirror") -> None:
        """Record a new filesystem: how it makes data sets, and its root directory.

        EEXIST if the state is not empty (already formatted).
        """
        if journal.state.inodes or journal.state.format is not None:
            raise refuse(errno.EEXIST, "the filesystem is already formatted")
        journal.record((Op.FORMAT, scheme.encode(), chunk_size, set_size, codec.encode()))
        t = now_ns()
        journal.record((Op.INODE, ROOT_INODE, stat.S_IFDIR | mode, uid, gid, 0, 0, t, t, t,
                        2, None))

    def remove_orphans(self) -> int:
        """Delete inodes with no name (left by a crash while open); return how many."""
        orphans = [n.ino for n in self.state.inodes.values()
                   if n.nlink == 0 and n.ino != ROOT_INODE]
        for ino in orphans:
            self.journal.record((Op.DELETE, ino))
        return len(orphans)

    # -- looking things up --------------------------------------------------------
    def inode(self, ino: int) -> Inode:
        """The inode numbered ``ino``; ENOENT if there is none."""
        node = self.state.inodes.get(ino)
        if node is None:
            raise refuse(errno.ENOENT, f"no inode {ino}")
        return node

    def _dir(self, ino: int) -> Inode:
        node = self.inode(ino)
        if node.dir is None:
            raise refuse(errno.ENOTDIR)
        return node

    def child(self, parent: int, name: bytes) -> Inode:
        """The inode named ``name`` in directory ``parent`` (``.`` and ``..`` too)."""
        p = self._dir(parent)
        if name == b".":
            return p
        if name == b"..":
            return self.inode(p.parent)
        ino = p.dir.get(name)
        if ino is None:
            raise refuse(errno.ENOENT)
        return self.state.inodes[ino]

    # -- kernel references -----------------------------------------------------------
    def remember(self, ino: int) -> None:
        """The kernel learned about ``ino`` (one more lookup to be forgotten)."""
        self._lookups[ino] = self._lookups.get(ino, 0) + 1

    def forget(self, ino: int, count: int) -> None:
        left = self._lookups.get(ino, 0) - count
        if left > 0:
            self._lookups[ino] = left
        else:
            self._lookups.pop(ino, None)
            self._maybe_delete(ino)

    def opened(self, ino: int) -> None:
        self._opens[ino] = self._opens.get(ino, 0) + 1

    def released(self, ino: int) -> None:
        left = self._opens.get(ino, 0) - 1
        if left > 0:
            self._opens[ino] = left
        else:
            self._opens.pop(ino, None)
            self._maybe_delete(ino)

    def is_open(self, ino: int) -> bool:
        return ino in self._opens

    def _maybe_delete(self, ino: int) -> None:
        node = self.state.inodes.get(ino)
        if (node is not None and node.nlink == 0 and ino != ROOT_INODE
                and ino not in self._lookups and ino not in self._opens):
            self.journal.record((Op.DELETE, ino))

    # -- creating and removing names ------------------------------------------------
    def _check_new_name(self, parent: int, name: bytes) -> Inode:
        p = self._dir(parent)
        if p.nlink == 0:
            raise refuse(errno.ENOENT, "the directory was removed")
        if name in (b".", b"..") or p.dir.get(name) is not None:
            raise refuse(errno.EEXIST)
        if len(name) > NAME_MAX:
            raise refuse(errno.ENAMETOOLONG)
        if not name or b"/" in name or b"\0" in name:
            raise refuse(errno.EINVAL, f"invalid name {name!r}")
        return p

    def create(self, parent: int, name: bytes, mode: int, uid: int, gid: int, rdev: int = 0,
               target: bytes | None = None) -> Inode:
        """A new inode named ``name`` in ``parent`` (files, directories, symlinks, nodes)."""
        p = self._check_new_name(parent, name)
        if target is not None and len(target) > SYMLINK_MAX:
            raise refuse(errno.ENAMETOOLONG, "symlink target too long")
        for what, value in (("mode", mode), ("uid", uid), ("gid", gid)):
            _check_u32(what, value)
        if not 0 <= rdev <= U64_MAX:
            raise refuse(errno.EINVAL, f"device number {rdev} does not fit 64 bits")
        if p.mode & stat.S_ISGID:
            gid = p.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        ino = self.state.next_ino
        t = now_ns()
        self.journal.record((Op.INODE, ino, mode, uid, gid, rdev, len(target or b""), t, t, t,
                             0, target))
        self.journal.record((Op.LINK, parent, name, ino, t))
        return self.state.inodes[ino]

    def link(self, ino: int, parent: int, name: bytes) -> Inode:
        """A new name for an existing inode (not a directory: EPERM)."""
        node = self.inode(ino)
        if node.dir is not None:
            raise refuse(errno.EPERM, "hard links to directories are not allowed")
        if node.nlink == 0:
            raise refuse(errno.ENOENT, "the file was removed")
        self._check_new_name(parent, name)
        self.journal.record((Op.LINK, parent, name, ino, now_ns()))
        return node

    def unlink(self, parent: int, name: bytes) -> None:
        """Remove a name of a non-directory; the inode lives on while referenced."""
        node = self.child(parent, name)
        if name in (b".", b".."):
            raise refuse(errno.EINVAL)
        if node.dir is not None:
            raise refuse(errno.EISDIR)
        self.journal.record((Op.UNLINK, parent, name, now_ns()))
        self._maybe_delete(node.ino)

    def rmdir(self, parent: int, name: bytes) -> None:
        """Remove an empty directory."""
        if name == b".":
            raise refuse(errno.EINVAL)
        if name == b"..":
            raise refuse(errno.ENOTEMPTY)
        node = self.child(parent, name)
        if node.dir is None:
            raise refuse(errno.ENOTDIR)
        if len(node.dir):
            raise refuse(errno.ENOTEMPTY)
        self.journal.record((Op.UNLINK, parent, name, now_ns()))
        self._maybe_delete(node.ino)

    def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
               flags: int = 0) -> None:
        """Move a name, replacing a file by a file or an empty directory by a directory."""
        if flags & RENAME_EXCHANGE or flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise refuse(errno.EINVAL, "RENAME_EXCHANGE is not supported")
        if old_name in (b".", b"..") or new_name in (b".", b".."):
            raise refuse(errno.EBUSY)
        node = self.child(old_parent, old_name)
        np = self._dir(new_parent)
        if len(new_name) > NAME_MAX:
            raise refuse(errno.ENAMETOOLONG)
        if not new_name or b"/" in new_name or b"\0" in new_name:
            raise refuse(errno.EINVAL, f"invalid name {new_name!r}")
        if node.dir is not None:
            ancestor = np
            while True:  # a directory cannot move into itself or below itself
                if ancestor.ino == node.ino:
                    raise refuse(errno.EINVAL, "cannot move a directory into itself")
                if ancestor.ino == ROOT_INODE:
                    break
                ancestor = self.state.inodes[ancestor.parent]
        target_ino = np.dir.get(new_name)
        target = None
        if target_ino is not None:
            if flags & RENAME_NOREPLACE:
                raise refuse(errno.EEXIST)
            if target_ino == node.ino:
                return  # two names of one inode: rename does nothing
            target = self.state.inodes[target_ino]
            if target.dir is not None and node.dir is None:
                raise refuse(errno.EISDIR)
            if target.dir is None and node.dir is not None:
                raise refuse(errno.ENOTDIR)
            if target.dir is not None and len(target.dir):
                raise refuse(errno.ENOTEMPTY)
        elif np.nlink == 0:
            raise refuse(errno.ENOENT, "the target directory was removed")
        self.journal.record((Op.RENAME, old_parent, old_name, new_parent, new_name, now_ns()))
        if target is not None:
            self._maybe_delete(target.ino)

    # -- attributes ------------------------------------------------------------------
    @staticmethod
    def check_attrs(*, mode=None, uid=None, gid=None, atime=None, mtime=None,
                    ctime=None) -> None:
        """Refuse attribute values the records cannot store (EINVAL, EOVERFLOW for times);
        for callers that change the size first (``setattr`` checks them itself)."""
        for what, value in (("mode", mode), ("uid", uid), ("gid", gid)):
            _check_u32(what, value)
        for value in (atime, mtime, ctime):
            _check_time(value)

    def setattr(self, ino: int, *, mode=None, uid=None, gid=None, size=None, atime=None,
                mtime=None, ctime=None) -> Inode:
        """Change attributes; ``size`` only for regular files (EISDIR, EINVAL otherwise).

        A smaller size unmaps the pages past it; the caller (the data layer) zeroes the
        rest of the last page first. ctime becomes now unless given.
        """
        node = self.inode(ino)
        mask = 0
        if size is not None:
            if node.dir is not None:
                raise refuse(errno.EISDIR)
            if not stat.S_ISREG(node.mode):
                raise refuse(errno.EINVAL, "only regular files have a settable size")
            if size < 0:
                raise refuse(errno.EINVAL)
            if size > I64_MAX:
                raise refuse(errno.EFBIG)
            mask |= ATTR_SIZE | ATTR_MTIME
            if mtime is None:
                mtime = now_ns()
        self.check_attrs(mode=mode, uid=uid, gid=gid, atime=atime, mtime=mtime, ctime=ctime)
        for bit, value in ((ATTR_MODE, mode), (ATTR_UID, uid), (ATTR_GID, gid),
                           (ATTR_ATIME, atime), (ATTR_MTIME, mtime)):
            if value is not None:
                mask |= bit
        mask |= ATTR_CTIME
        self.journal.record((Op.SETATTR, ino, mask, mode or 0, uid or 0, gid or 0, size or 0,
                             atime or 0, mtime or 0, now_ns() if ctime is None else ctime))
        return node

    def written(self, ino: int, end: int) -> None:
        """Data was written up to ``end``: the size grows to it, mtime and ctime are now."""
        # the record carries the resulting size, not ``end``: it may replace the queued
        # WRITTEN record before it (Journal.record), which must not shrink the file
        if end > I64_MAX:
            raise refuse(errno.EFBIG)
        size = max(self.inode(ino).size, end)
        self.journal.record((Op.WRITTEN, ino, size, now_ns()))

    # -- extended attributes -----------------------------------------------------------
    def getxattr(self, ino: int, name: bytes) -> bytes:
        value = self.inode(ino).xattrs.get(name)
        if value is None:
            raise refuse(errno.ENODATA)
        return value

    def listxattr(self, ino: int) -> list[bytes]:
        return list(self.inode(ino).xattrs)

    def setxattr(self, ino: int, name: bytes, value: bytes) -> None:
        """Store a ``user.*`` attribute (ENOTSUP for other namespaces)."""
        self.inode(ino)
        if not name.startswith(b"user.") or len(name) == 5:
            raise refuse(errno.ENOTSUP, "only user.* extended attributes are stored")
        if len(name) > XATTR_NAME_MAX:
            raise refuse(errno.ERANGE, "attribute name too long")
        if len(value) > XATTR_SIZE_MAX:
            raise refuse(errno.E2BIG, "attribute value too large")
        self.journal.record((Op.XATTR, ino, name, bytes(value)))

    def removexattr(self, ino: int, name: bytes) -> None:
        if name not in self.inode(ino).xattrs:
            raise refuse(errno.ENODATA)
        self.journal.record((Op.XATTR, ino, name, None))

    # -- space -------------------------------------------------------------------------
    def add_set(self, set_id: int, size: int) -> None:
        """Record a new backing set (created by the data layer)."""
        if set_id in self.state.allocator.set_sizes():
            raise FsError(f"set {set_id} is already recorded")
        self.journal.record((Op.SET, set_id, size))

    def map(self, ino: int, file_offset: int, pieces) -> None:
        """Map reserved ``(set_id, offset, length)`` pieces at ``file_offset`` onward."""
        for set_id, set_offset, length in pieces:
            self.journal.record((Op.MAP, ino, file_offset, length, set_id, set_offset))
            file_offset += length

    def punch(self, ino: int, file_offset: int, length: int) -> None:
        """Unmap the page-aligned range (a hole from now on; its space is freed)."""
        node = self.inode(ino)
        if node.extents is None:
            raise refuse(errno.EINVAL, "only regular files have data")
        self.journal.record((Op.PUNCH, ino, file_offset, length))

    def mark_lost(self, ino: int, file_offset: int, length: int) -> None:
        """The page-aligned range's data never reached its set: it reads as EIO from now on
        (mapped to set LOST), and the set space it had is freed."""
        self.punch(ino, file_offset, length)
        self.journal.record((Op.MAP, ino, file_offset, length, LOST, file_offset))
