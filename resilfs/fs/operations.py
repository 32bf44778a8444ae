"""The FUSE request handlers: the only module that turns errors into ``pyfuse3.FUSEError``.

``Operations`` receives its collaborators (metadata, file data, journal) in the
constructor and keeps only per-mount bookkeeping of its own: file handles. Every handler
runs through ``_handler``: an FsError becomes its errno; any other exception is logged
with its traceback and answered EIO, so that a bug fails one request, not the mount.
``_handler`` also counts each request, its time and whether it failed in ``requests``
(``resilfs.fs.latency.Requests``, one slot per handler), for the mount's metrics.

Kernel caches. The kernel checks permissions (``default_permissions``), keeps pages across
opens (``keep_cache``) and runs a writeback cache; it is the only client of this namespace,
so attributes may be cached long. On a size change by SETATTR or by an O_TRUNC open, the
kernel truncates its own page cache (and mappings) before the reply. Changes the kernel
did not make itself (a snapshot restore) are announced to it by the snapshot code.

Space: while the filesystem is nearly full, files are opened for writing with direct I/O
(``FileData.nearly_full``), so that write(2) gets ENOSPC as soon as its data cannot be
stored rather than at fsync or close.

Failsafe: when a request finds data unavailable beyond the set's tolerance, that request
gets EIO and the filesystem turns read-only (``Failsafe``; ReadOnly, EROFS, for every later
change); a flush that lost data beyond tolerance turns it read-only too; reads of other
files keep working.
"""
import errno
import functools
import logging
import os
import stat
from time import perf_counter_ns

import pyfuse3
import trio

from .data import FileData
from .errors import DataUnavailable, FsError, ReadOnly
from .journal import Journal
from .latency import Requests
from .metadata import Metadata
from .snapshot_xattrs import LIST as SNAPSHOT_LIST
from .snapshot_xattrs import NAMES as SNAPSHOT_XATTRS
from .state import Inode

log = logging.getLogger(__name__)

ATTR_TIMEOUT = 60.0
BLOCK = 4096
DOT_COOKIES = 2  # readdir cookies of "." and ".."; a directory's own cookies come after
#: names that are commands and reports (resilfs.fs.control); unknown ones are EINVAL
CONTROL_PREFIX = b"user.resilfs."


#: the handlers' names; a handler's slot in ``Operations.requests`` is its index here
HANDLERS: list[str] = []


def _handler(method):
    """Turn FsError into FUSEError(errno), anything unexpected into a logged EIO; count the
    request, its time and its failure in ``self.requests``."""
    slot = len(HANDLERS)
    HANDLERS.append(method.__name__)

    @functools.wraps(method)
    async def wrapper(self, *args):
        requests = self.requests
        start = perf_counter_ns()
        try:
            return await method(self, *args)
        except pyfuse3.FUSEError:
            requests.errors[slot] += 1
            raise
        except FsError as exc:
            requests.errors[slot] += 1
            if isinstance(exc, DataUnavailable) and not self.failsafe.read_only:
                log.error("data lost beyond tolerance (%s): the filesystem is now read-only",
                          exc)
                self.failsafe.read_only = True
            raise pyfuse3.FUSEError(exc.errno) from None
        except Exception:
            requests.errors[slot] += 1
            log.exception("%s(%s) failed", method.__name__, _short(args))
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            requests.latency[slot].record(perf_counter_ns() - start)
    return wrapper


async def _together(*calls) -> None:
    """Await ``calls`` concurrently; then raise the error of the first one that failed."""
    errors: list[BaseException | None] = [None] * len(calls)

    async def run(i, call):
        try:
            await call()
        except Exception as exc:  # raised below, in order
            errors[i] = exc

    async with trio.open_nursery() as nursery:
        for i, call in enumerate(calls):
            nursery.start_soon(run, i, call)
    for error in errors:
        if error is not None:
            raise error


def _short(args) -> str:
    """Arguments for a log line: buffers by their length, not their bytes."""
    return ", ".join(f"<{len(a)} bytes>" if isinstance(a, (bytes, memoryview)) and len(a) > 64
                     else repr(a) for a in args)


class Failsafe:
    """Whether the filesystem refuses every change: mounted so, or turned so by the first
    request that found data lost beyond a set's tolerance. Made before the ``Operations``
    that sets it and the ``Control`` that reports it, which both hold it."""

    def __init__(self, read_only: bool = False, data: FileData | None = None):
        self._read_only = read_only
        self._data = data  # its ``lost``: a flush lost data beyond tolerance

    @property
    def read_only(self) -> bool:
        """Mounted read-only, or turned so by a loss (a failed request, a failed flush)."""
        return self._read_only or (self._data is not None and self._data.lost)

    @read_only.setter
    def read_only(self, value: bool) -> None:
        self._read_only = value


class Operations(pyfuse3.Operations):
    enable_writeback_cache = True
    supports_dot_lookup = True

    def __init__(self, metadata: Metadata, data: FileData, journal: Journal, control, *,
                 failsafe: Failsafe | None = None, snapshots=None):
        super().__init__()
        self.metadata = metadata
        self.data = data
        self.journal = journal
        self.control = control  # answers user.resilfs.* (resilfs.fs.control.Control)
        self.failsafe = failsafe or Failsafe(data=data)
        self.snapshots = snapshots  # resilfs.fs.snapshots.Snapshots: .snapshots is read-only
        self._handles: dict[int, int] = {}  # file handle -> inode
        self._writers: set[int] = set()  # file handles opened for writing
        self._next_fh = 1
        self.requests = Requests(HANDLERS)  # per-handler counts, for resilfs.fs.metrics

    # -- helpers ---------------------------------------------------------------------
    def _attrs(self, node: Inode) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        a.entry_timeout = a.attr_timeout = ATTR_TIMEOUT
        a.st_mode = node.mode
        a.st_nlink = node.nlink
        a.st_uid, a.st_gid, a.st_rdev = node.uid, node.gid, node.rdev
        a.st_size = node.size
        a.st_blksize = BLOCK
        a.st_blocks = (node.extents.mapped_bytes // 512) if node.extents is not None else 0
        a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = node.atime, node.mtime, node.ctime
        return a

    def _entry(self, node: Inode) -> pyfuse3.EntryAttributes:
        """Attributes for a reply that gives the kernel a new reference (lookup count + 1)."""
        self.metadata.remember(node.ino)
        return self._attrs(node)

    def _writable(self, ino: int | None = None, name: bytes | None = None) -> None:
        """ReadOnly (EROFS) if the filesystem is read-only, or ``ino`` (entry ``name`` in it)
        is part of the read-only snapshot view."""
        if self.failsafe.read_only:
            raise ReadOnly("the filesystem is read-only")
        if ino is not None and self.snapshots is not None and self.snapshots.frozen(ino, name):
            raise ReadOnly("snapshots are read-only")
        self.journal.check_room()  # EIO while too many changes wait for a failing commit

    def _open_handle(self, ino: int, flags: int) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = ino
        if flags & (os.O_WRONLY | os.O_RDWR):
            self._writers.add(fh)
        self.metadata.opened(ino)
        return fh

    # -- names -----------------------------------------------------------------------
    @_handler
    async def lookup(self, parent_inode, name, ctx=None):
        return self._entry(self.metadata.child(parent_inode, name))

    async def forget(self, inode_list):
        try:
            for ino, count in inode_list:
                self.metadata.forget(ino, count)
        except Exception:
            log.exception("forget failed")  # forget has no reply: never raise

    @_handler
    async def getattr(self, inode, ctx=None):
        return self._attrs(self.metadata.inode(inode))

    @_handler
    async def setattr(self, inode, attr, fields, fh, ctx):
        self._writable(inode)
        changes = {}
        if fields.update_mode:
            changes["mode"] = attr.st_mode
        if fields.update_uid:
            changes["uid"] = attr.st_uid
        if fields.update_gid:
            changes["gid"] = attr.st_gid
        if fields.update_atime:
            changes["atime"] = attr.st_atime_ns
        if fields.update_mtime:
            changes["mtime"] = attr.st_mtime_ns
        if fields.update_ctime:
            changes["ctime"] = attr.st_ctime_ns
        self.metadata.check_attrs(**changes)  # before the size changes: a refusal changes nothing
        if fields.update_size:
            await self.data.truncate(inode, attr.st_size)
        if changes or not fields.update_size:
            self.metadata.setattr(inode, **changes)
        return self._attrs(self.metadata.inode(inode))

    @_handler
    async def readlink(self, inode, ctx):
        node = self.metadata.inode(inode)
        if node.target is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return node.target

    @_handler
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        self._writable(parent_inode, name)
        return self._entry(self.metadata.create(parent_inode, name, mode, ctx.uid, ctx.gid,
                                                rdev=rdev))

    @_handler
    async def mkdir(self, parent_inode, name, mode, ctx):
        self._writable(parent_inode, name)
        return self._entry(self.metadata.create(parent_inode, name,
                                                stat.S_IFDIR | (mode & 0o7777), ctx.uid,
                                                ctx.gid))

    @_handler
    async def symlink(self, parent_inode, name, target, ctx):
        self._writable(parent_inode, name)
        return self._entry(self.metadata.create(parent_inode, name, stat.S_IFLNK | 0o777,
                                                ctx.uid, ctx.gid, target=target))

    @_handler
    async def link(self, inode, new_parent_inode, new_name, ctx):
        self._writable(inode)
        self._writable(new_parent_inode, new_name)
        return self._entry(self.metadata.link(inode, new_parent_inode, new_name))

    @_handler
    async def unlink(self, parent_inode, name, ctx):
        self._writable(parent_inode, name)
        self.metadata.unlink(parent_inode, name)

    @_handler
    async def rmdir(self, parent_inode, name, ctx):
        self._writable(parent_inode, name)
        self.metadata.rmdir(parent_inode, name)

    @_handler
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self._writable(parent_inode_old, name_old)
        self._writable(parent_inode_new, name_new)
        self.metadata.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    # -- files -----------------------------------------------------------------------
    @_handler
    async def create(self, parent_inode, name, mode, flags, ctx):
        direct = await self.data.nearly_full()  # first: no await once the inode exists
        self._writable(parent_inode, name)
        node = self.metadata.create(parent_inode, name, stat.S_IFREG | (mode & 0o7777),
                                    ctx.uid, ctx.gid)
        fh = self._open_handle(node.ino, flags)
        return (pyfuse3.FileInfo(fh=fh, keep_cache=not direct, direct_io=direct),
                self._entry(node))

    @_handler
    async def open(self, inode, flags, ctx):
        node = self.metadata.inode(inode)
        if node.dir is not None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
            self._writable(inode)
        if flags & os.O_TRUNC and node.size:
            await self.data.truncate(inode, 0)  # the kernel drops its pages itself
        direct = bool(flags & (os.O_WRONLY | os.O_RDWR)) and await self.data.nearly_full()
        return pyfuse3.FileInfo(fh=self._open_handle(inode, flags), keep_cache=not direct,
                                direct_io=direct)

    @_handler
    async def read(self, fh, off, size):
        data = await self.data.read(self._handles[fh], off, size)
        self.requests.read_bytes += len(data)
        return data

    @_handler
    async def write(self, fh, off, buf):
        self._writable()
        written = await self.data.write(self._handles[fh], off, buf)
        self.requests.written_bytes += written
        return written

    @_handler
    async def fallocate(self, inode, mode, offset, length):
        """FUSE_FALLOCATE (served through ``resilfs.fs.fuse_fallocate``)."""
        self._writable(inode)
        await self.data.fallocate(inode, mode, offset, length)

    @_handler
    async def flush(self, fh):
        # durability is fsync's job (writes may wait in the write-behind cache); closing
        # a file opened for writing reports data of the file already known lost
        if fh in self._writers:
            self.data.check_lost(self._handles[fh])

    @_handler
    async def release(self, fh):
        self._writers.discard(fh)
        self.metadata.released(self._handles.pop(fh))

    @_handler
    async def fsync(self, fh, datasync):
        # the file's data and the journal commit are written at the same time: the data a
        # batch's MAP records point at is made durable first inside the commit (ordered
        # data), nothing else depends on their order; EIO if deferred writes were lost
        await _together(functools.partial(self._flush_after_commit_sent, self._handles[fh]),
                        self.journal.commit)

    async def _flush_after_commit_sent(self, ino: int) -> None:
        """``data.flush(ino)``, started two scheduling rounds late: the commit task takes
        its lock and spawns one task per journal copy without yielding, and those send
        their requests in the next round, so the appliances store the journal batch
        while this task writes the data (over shm the data flush is CPU work of this
        process, ~0.2 ms for a 4 KiB ec:4+2 update, that would otherwise delay the
        requests by as much)."""
        await trio.lowlevel.checkpoint()
        await trio.lowlevel.checkpoint()
        await self.data.flush(ino)

    # -- directories -----------------------------------------------------------------
    @_handler
    async def opendir(self, inode, ctx):
        if self.metadata.inode(inode).dir is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @_handler
    async def readdir(self, fh, start_id, token):
        """"." and ".." first (cookies 1 and 2; neither takes a lookup reference, the
        kernel does not link them), then the entries (their directory's cookies + 2). A
        directory removed while open lists ".." as itself."""
        node = self.metadata.inode(fh)
        inodes = self.metadata.state.inodes
        dots = ((1, b".", node), (DOT_COOKIES, b"..", inodes.get(node.parent, node)))
        for cookie, name, dot in dots:
            if start_id < cookie and not pyfuse3.readdir_reply(token, name, self._attrs(dot),
                                                               cookie):
                return
        for cookie, name, ino in node.dir.listing(max(start_id - DOT_COOKIES, 0)):
            if not pyfuse3.readdir_reply(token, name, self._attrs(inodes[ino]),
                                         cookie + DOT_COOKIES):
                break
            self.metadata.remember(ino)

    @_handler
    async def releasedir(self, fh):
        pass

    @_handler
    async def fsyncdir(self, fh, datasync):
        await self.data.flush()
        await self.journal.commit()

    # -- the filesystem ----------------------------------------------------------------
    @_handler
    async def statfs(self, ctx):
        total, free = await self.data.capacity()
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = BLOCK
        s.f_blocks = total // BLOCK
        s.f_bfree = s.f_bavail = free // BLOCK
        inodes = len(self.metadata.state.inodes)
        s.f_files = inodes + free // BLOCK
        s.f_ffree = s.f_favail = free // BLOCK
        s.f_namemax = 255
        return s

    @_handler
    async def access(self, inode, mode, ctx):
        """Only called without default_permissions: checks the mode bits like the kernel."""
        node = self.metadata.inode(inode)
        if ctx.uid == 0:
            return not (mode & os.X_OK) or bool(node.mode & 0o111) or node.dir is not None
        if ctx.uid == node.uid:
            bits = (node.mode >> 6) & 7
        elif ctx.gid == node.gid or node.gid in pyfuse3.get_sup_groups(ctx.pid):
            bits = (node.mode >> 3) & 7
        else:
            bits = node.mode & 7
        return (mode & bits) == mode

    # -- extended attributes ---------------------------------------------------------
    @_handler
    async def getxattr(self, inode, name, ctx):
        if self.snapshots is not None and name in SNAPSHOT_XATTRS:
            return await self.snapshots.get(inode, name)
        if name.startswith(CONTROL_PREFIX):
            self.metadata.inode(inode)
            return await self.control.get(name)
        return self.metadata.getxattr(inode, name)

    @_handler
    async def setxattr(self, inode, name, value, ctx):
        if self.snapshots is not None and name in SNAPSHOT_XATTRS:
            if name != SNAPSHOT_LIST:
                self._writable()
            return await self.snapshots.set(inode, name, value)
        if name.startswith(CONTROL_PREFIX):
            self.metadata.inode(inode)
            return await self.control.set(name, value)
        self._writable(inode)
        self.metadata.setxattr(inode, name, value)

    @_handler
    async def listxattr(self, inode, ctx):
        return self.metadata.listxattr(inode)

    @_handler
    async def removexattr(self, inode, name, ctx):
        if name.startswith(CONTROL_PREFIX):
            raise pyfuse3.FUSEError(errno.EINVAL)
        self._writable(inode)
        self.metadata.removexattr(inode, name)
