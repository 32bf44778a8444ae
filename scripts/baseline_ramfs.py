#!/usr/bin/env python3
"""A bare in-memory pyfuse3 filesystem: the ceiling for any Python FUSE daemon here.

``scripts/bench_fs.sh`` runs fio on it beside tmpfs and resilfs. It uses resilfs's mount
options, writeback cache and read-ahead (``resilfs.fs.kernel``) and nothing else: no journal,
no segments, no appliances. Data lives in one bytearray per file, written through
memoryviews (one copy). Enough POSIX for fio: create, open, read, write, truncate, unlink,
getattr/setattr, readdir, mkdir, rmdir, rename.

With ``--xattrs`` it also answers getxattr and listxattr (no attributes), as a filesystem
with extended attributes does; the kernel then asks for ``security.capability`` on every
write(2), as it does on resilfs (without it, ENOSYS makes the kernel stop asking).

usage: baseline_ramfs.py [--xattrs] MOUNTPOINT   (runs in the foreground; unmount with
fusermount3 -u)
"""
import errno
import logging
import os
import stat
import sys
import time

import pyfuse3
import trio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from resilfs.fs.kernel import fuse_options, tune_when_ready  # noqa: E402

log = logging.getLogger("baseline_ramfs")


class Node:
    __slots__ = ("ino", "mode", "uid", "gid", "nlink", "data", "size", "atime", "mtime",
                 "ctime", "entries", "parent", "lookups")

    def __init__(self, ino, mode, uid, gid):
        now = time.time_ns()
        self.ino, self.mode, self.uid, self.gid = ino, mode, uid, gid
        self.nlink = 2 if stat.S_ISDIR(mode) else 1
        self.data = bytearray()
        self.size = 0
        self.atime = self.mtime = self.ctime = now
        self.entries = {} if stat.S_ISDIR(mode) else None
        self.parent = None
        self.lookups = 0


class RamFS(pyfuse3.Operations):
    enable_writeback_cache = True

    def __init__(self, xattrs: bool = False):
        super().__init__()
        self.xattrs = xattrs
        root = Node(pyfuse3.ROOT_INODE, stat.S_IFDIR | 0o755, os.getuid(), os.getgid())
        root.parent = root.ino
        self.nodes = {root.ino: root}
        self.next_ino = root.ino + 1
        self.open_count = {}

    def _node(self, ino):
        try:
            return self.nodes[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _attr(self, node):
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.st_mode, a.st_nlink, a.st_uid, a.st_gid = node.mode, node.nlink, node.uid, node.gid
        a.st_size = node.size
        a.st_blksize = 4096
        a.st_blocks = (node.size + 511) // 512
        a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = node.atime, node.mtime, node.ctime
        a.attr_timeout = a.entry_timeout = 300
        return a

    def _child(self, parent, name):
        ino = self._node(parent).entries.get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.nodes[ino]

    async def lookup(self, parent_inode, name, ctx=None):
        if name == b".":
            node = self._node(parent_inode)
        elif name == b"..":
            node = self._node(self._node(parent_inode).parent)
        else:
            node = self._child(parent_inode, name)
        node.lookups += 1
        return self._attr(node)

    async def forget(self, inode_list):
        for ino, count in inode_list:
            node = self.nodes.get(ino)
            if node is None:
                continue
            node.lookups -= count
            self._maybe_free(node)

    def _maybe_free(self, node):
        if node.nlink == 0 and node.lookups <= 0 and not self.open_count.get(node.ino):
            del self.nodes[node.ino]

    async def getattr(self, inode, ctx=None):
        return self._attr(self._node(inode))

    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self._node(inode)
        if fields.update_size:
            size = attr.st_size
            if size < len(node.data):
                del node.data[size:]
            node.size = size
        if fields.update_mode:
            node.mode = (node.mode & ~0o7777) | (attr.st_mode & 0o7777)
        if fields.update_uid:
            node.uid = attr.st_uid
        if fields.update_gid:
            node.gid = attr.st_gid
        if fields.update_atime:
            node.atime = attr.st_atime_ns
        if fields.update_mtime:
            node.mtime = attr.st_mtime_ns
        node.ctime = attr.st_ctime_ns if fields.update_ctime else time.time_ns()
        return self._attr(node)

    def _new(self, parent_inode, name, mode, ctx):
        parent = self._node(parent_inode)
        if name in parent.entries:
            raise pyfuse3.FUSEError(errno.EEXIST)
        node = Node(self.next_ino, mode, ctx.uid, ctx.gid)
        self.next_ino += 1
        node.parent = parent.ino
        node.lookups = 1
        self.nodes[node.ino] = node
        parent.entries[name] = node.ino
        if stat.S_ISDIR(mode):
            parent.nlink += 1
        parent.mtime = parent.ctime = time.time_ns()
        return node

    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._attr(self._new(parent_inode, name, stat.S_IFDIR | (mode & 0o7777), ctx))

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return self._attr(self._new(parent_inode, name, mode, ctx))

    async def create(self, parent_inode, name, mode, flags, ctx):
        node = self._new(parent_inode, name, mode, ctx)
        self.open_count[node.ino] = self.open_count.get(node.ino, 0) + 1
        return pyfuse3.FileInfo(fh=node.ino, keep_cache=True), self._attr(node)

    async def open(self, inode, flags, ctx):
        node = self._node(inode)
        self.open_count[inode] = self.open_count.get(inode, 0) + 1
        if flags & os.O_TRUNC:
            del node.data[:]
            node.size = 0
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def release(self, fh):
        self.open_count[fh] -= 1
        node = self.nodes.get(fh)
        if node is not None:
            self._maybe_free(node)

    async def read(self, fh, off, size):
        node = self.nodes[fh]
        end = min(off + size, node.size)
        if end <= off:
            return b""
        have = min(end, len(node.data))
        view = memoryview(node.data)[off:have] if off < have else memoryview(b"")
        if have < end:  # a hole at the end of the file (size grown by truncate)
            return bytes(view) + bytes(end - max(off, have))
        return view

    async def write(self, fh, off, buf):
        node = self.nodes[fh]
        end = off + len(buf)
        if end > len(node.data):
            node.data.extend(bytes(end - len(node.data)))
        memoryview(node.data)[off:end] = buf
        node.size = max(node.size, end)
        node.mtime = node.ctime = time.time_ns()
        return len(buf)

    async def flush(self, fh):
        pass

    async def getxattr(self, inode, name, ctx):
        if not self.xattrs:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        self._node(inode)
        raise pyfuse3.FUSEError(errno.ENODATA)

    async def listxattr(self, inode, ctx):
        if not self.xattrs:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        self._node(inode)
        return []

    async def fsync(self, fh, datasync):
        pass

    def _remove(self, parent_inode, name, want_dir):
        parent = self._node(parent_inode)
        node = self._child(parent_inode, name)
        is_dir = stat.S_ISDIR(node.mode)
        if want_dir and not is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if not want_dir and is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if is_dir and node.entries:
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        del parent.entries[name]
        if is_dir:
            parent.nlink -= 1
            node.nlink = 0
        else:
            node.nlink -= 1
        parent.mtime = parent.ctime = node.ctime = time.time_ns()
        self._maybe_free(node)

    async def unlink(self, parent_inode, name, ctx):
        self._remove(parent_inode, name, want_dir=False)

    async def rmdir(self, parent_inode, name, ctx):
        self._remove(parent_inode, name, want_dir=True)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        if flags:
            raise pyfuse3.FUSEError(errno.EINVAL)
        node = self._child(parent_inode_old, name_old)
        new_parent = self._node(parent_inode_new)
        if name_new in new_parent.entries:
            target = self.nodes[new_parent.entries[name_new]]
            if target is node:
                return
            self._remove(parent_inode_new, name_new, want_dir=stat.S_ISDIR(node.mode))
        old_parent = self._node(parent_inode_old)
        del old_parent.entries[name_old]
        new_parent.entries[name_new] = node.ino
        if stat.S_ISDIR(node.mode):
            old_parent.nlink -= 1
            new_parent.nlink += 1
            node.parent = new_parent.ino
        now = time.time_ns()
        old_parent.mtime = old_parent.ctime = new_parent.mtime = new_parent.ctime = now

    async def opendir(self, inode, ctx):
        if self._node(inode).entries is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh, start_id, token):
        # offsets are positions in a sorted snapshot: good enough for fio's directories
        names = sorted(self.nodes[fh].entries)
        for i in range(start_id, len(names)):
            node = self.nodes[self.nodes[fh].entries[names[i]]]
            if not pyfuse3.readdir_reply(token, names[i], self._attr(node), i + 1):
                break

    async def releasedir(self, fh):
        pass

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 1 << 22
        s.f_files = s.f_ffree = s.f_favail = 1 << 20
        s.f_namemax = 255
        return s


async def _serve(mountpoint):
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pyfuse3.main)
        await trio.to_thread.run_sync(tune_when_ready, mountpoint, abandon_on_cancel=True)


def main(args=None) -> int:
    args = sys.argv[1:] if args is None else list(args)
    xattrs = "--xattrs" in args
    if xattrs:
        args.remove("--xattrs")
    if len(args) != 1:
        print("usage: baseline_ramfs.py [--xattrs] MOUNTPOINT", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="baseline_ramfs: %(message)s")
    mountpoint = os.path.abspath(args[0])
    pyfuse3.init(RamFS(xattrs), mountpoint, fuse_options("baseline_ramfs"))
    try:
        trio.run(_serve, mountpoint)
    except KeyboardInterrupt:
        pass
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
