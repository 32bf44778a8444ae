"""Exceptions of the filesystem layers; each carries the errno a FUSE reply should use.

Only ``resilfs.fs.operations`` turns them into ``pyfuse3.FUSEError``.
"""
import errno

from ..errors import ResilfsError


class FsError(ResilfsError):
    """A filesystem operation was refused; nothing changed."""

    errno = errno.EIO

    def __init__(self, message: str = "", code: int | None = None):
        super().__init__(message)
        if code is not None:
            self.errno = code


def refuse(code: int, message: str = "") -> FsError:
    """An FsError with ``code`` (an errno value) for a refused operation."""
    return FsError(message or errno.errorcode.get(code, str(code)), code)


class DataUnavailable(FsError):
    """File data cannot be read or written: its set lost more members than it tolerates."""

    errno = errno.EIO


class ReadOnly(FsError):
    """A change refused: the filesystem is read-only (failsafe, after data loss), or the
    target is in the read-only snapshot view."""

    errno = errno.EROFS


class NoSpace(FsError):
    """The appliances cannot hold another data set."""

    errno = errno.ENOSPC
