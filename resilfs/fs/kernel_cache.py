"""What the kernel caches of a mount, written back or dropped on the filesystem's word:
dirty pages (``syncfs``), a directory's attributes, directory entries. With no mount point
(the layers used without FUSE, in tests) every call does nothing. Failures are logged,
never raised: the cache is the kernel's, and the filesystem's state is right regardless.
"""
import ctypes
import errno
import logging
import os

import pyfuse3
import trio

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(None, use_errno=True)


def _syncfs(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    finally:
        os.close(fd)


class KernelCache:
    """The kernel's cache of the mount at ``mountpoint`` (None: no kernel)."""

    def __init__(self, mountpoint: str | None):
        self.mountpoint = mountpoint

    async def flush(self) -> None:
        """Write back the kernel's dirty pages (writeback cache, mmap) to the filesystem, in
        a worker thread (the writeback comes back to this daemon as write requests)."""
        if self.mountpoint is None:
            return
        try:
            await trio.to_thread.run_sync(_syncfs, self.mountpoint)
        except OSError as exc:
            log.warning("syncfs %s: %s", self.mountpoint, exc)

    def invalidate_attrs(self, ino: int | None) -> None:
        """Drop the kernel's attributes of directory ``ino``. In this thread: only data
        invalidation can block (on writeback), and a directory's attributes have none."""
        if self.mountpoint is None or ino is None:
            return
        try:
            pyfuse3.invalidate_inode(ino, True)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning("could not invalidate inode %d: %s", ino, exc)

    async def invalidate_entry_now(self, parent: int, name: bytes) -> None:
        """Drop the kernel's entry and wait for it, in a worker thread (the request's own
        inode is locked by the kernel, its parent is not: no deadlock)."""
        if self.mountpoint is None:
            return
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_entry, parent, name)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning("could not invalidate entry %r of %d: %s", name, parent, exc)

    def invalidate_entry(self, parent: int | None, name: bytes) -> None:
        """Drop the kernel's entry ``name`` of ``parent`` without waiting."""
        if self.mountpoint is not None and parent is not None:
            pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)
