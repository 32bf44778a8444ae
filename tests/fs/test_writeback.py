"""The daemon's write-behind cache on real mounts: small writes wait in the daemon, are read
back from it at once, reach the appliances on fsync and on a clean unmount, and a flush
that fails beyond tolerance answers EIO on fsync."""
import ctypes
import errno
import json
import os

import pytest

from tests.fs.conftest import lose_one_set, make_cluster

pytestmark = pytest.mark.timeout(300)

PAGE = 4096
SYNC_FILE_RANGE_WRITE_AND_WAIT = 1 | 2 | 4  # WAIT_BEFORE | WRITE | WAIT_AFTER
_libc = ctypes.CDLL(None, use_errno=True)


def push_to_daemon(fd: int) -> None:
    """Write the kernel's dirty pages of ``fd`` to the daemon and drop them from the page
    cache, without an fsync (which would flush the daemon's cache too)."""
    if _libc.sync_file_range(fd, ctypes.c_int64(0), ctypes.c_int64(0),
                             SYNC_FILE_RANGE_WRITE_AND_WAIT) != 0:
        raise OSError(ctypes.get_errno(), "sync_file_range")
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def status(mnt: str) -> dict:
    return json.loads(os.getxattr(mnt, "user.resilfs.status"))


def overwrite_pages(path: str, data: bytearray, seed: int) -> None:
    """Overwrite a few scattered pages of ``path`` (and of ``data``, its model)."""
    with open(path, "r+b", buffering=0) as f:
        for k in range(8):
            at = ((seed * 7919 + k * 104729) % (len(data) // PAGE)) * PAGE
            page = os.urandom(PAGE)
            f.seek(at)
            f.write(page)
            data[at:at + PAGE] = page
        push_to_daemon(f.fileno())


@pytest.fixture
def ec_cluster(tmp_path):
    c = make_cluster(tmp_path, count=3, scheme="parity:2+1")
    try:
        yield c
    finally:
        c.close()
        c.launcher.close()


def test_unsynced_writes_are_read_from_the_daemon_and_kept_by_fsync_and_unmount(ec_cluster):
    c = ec_cluster
    mnt = c.mount().mountpoint
    paths = [os.path.join(mnt, name) for name in ("synced", "unsynced")]
    models = [bytearray(os.urandom(1 << 20)) for _ in paths]
    for path, model in zip(paths, models, strict=True):
        with open(path, "wb") as f:
            f.write(model)
            os.fsync(f.fileno())
    for seed, (path, model) in enumerate(zip(paths, models, strict=True)):
        overwrite_pages(path, model, seed)
        assert status(mnt)["cache"]["cached_bytes"] > 0  # the daemon holds them
        with open(path, "rb") as f:  # the kernel dropped its pages: read from the daemon
            assert f.read() == model
    with open(paths[0], "rb+") as f:
        os.fsync(f.fileno())
    c.mounts[-1].kill()  # a crash right after the fsync
    mnt = c.mount().mountpoint
    with open(paths[0], "rb") as f:
        assert f.read() == models[0]
    with open(paths[1], "rb") as f:  # not fsync'd: the crash may have lost some of it
        models[1] = bytearray(f.read())
    for seed, (path, model) in enumerate(zip(paths, models, strict=True), start=2):
        overwrite_pages(path, model, seed)
    c.remount()  # a clean unmount flushes the cache
    for path, model in zip(paths, models, strict=True):
        with open(path, "rb") as f:
            assert f.read() == model
    assert status(mnt)["cache"]["lost_blocks"] == 0


def test_new_small_files_survive_a_crash_after_fsync(ec_cluster):
    """Small allocating writes wait in the cache too; fsync (and the journal commit that
    maps them) put them on the appliances first."""
    c = ec_cluster
    mnt = c.mount().mountpoint
    contents = {f"f{i}": os.urandom(100 + 997 * i) for i in range(20)}
    for name, data in contents.items():
        with open(os.path.join(mnt, name), "wb") as f:
            f.write(data)
            os.fsync(f.fileno())
    c.mounts[-1].kill()
    mnt = c.mount().mountpoint
    for name, data in contents.items():
        with open(os.path.join(mnt, name), "rb") as f:
            assert f.read() == data


def test_a_flush_lost_beyond_tolerance_is_eio_on_fsync(tmp_path):
    c, _m, _contents, lost, kept = lose_one_set(tmp_path)
    try:
        # a whole page each: the kernel need not read it first
        with open(os.path.join(c.mountpoint, kept), "r+b", buffering=0) as f:
            f.write(b"k" * PAGE)
            os.fsync(f.fileno())  # a set within tolerance: fine
        fd = os.open(os.path.join(c.mountpoint, lost), os.O_RDWR)
        try:
            os.write(fd, b"x" * PAGE)  # into the page cache, then the daemon's: no error
            with pytest.raises(OSError) as info:
                os.fsync(fd)
            assert info.value.errno == errno.EIO
            with pytest.raises(OSError) as info:  # and again: the loss is not forgotten
                os.fsync(fd)
            assert info.value.errno == errno.EIO
        finally:
            with pytest.raises(OSError) as info:  # close reports it too
                os.close(fd)
            assert info.value.errno == errno.EIO
        assert status(c.mountpoint)["cache"]["lost_blocks"] >= 1
        assert status(c.mountpoint)["read_only"]
        with open(os.path.join(c.mountpoint, kept), "rb") as f:
            assert f.read(PAGE) == b"k" * PAGE
    finally:
        c.close()
        c.launcher.close()
