"""Beyond tolerance: EIO for the files on the lost set only, the rest readable, read-only."""
import errno
import os
import time

import pytest

from tests.fs.conftest import lose_one_set
from tests.fs.test_writeback import PAGE, push_to_daemon, status

pytestmark = pytest.mark.timeout(300)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping the page cache needs root")
def test_lost_set_gives_eio_and_read_only(tmp_path):
    c, _m, contents, lost, kept = lose_one_set(tmp_path)
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:  # read from the sets, not the cache
            f.write("3")
        with pytest.raises(OSError) as info:
            open(os.path.join(c.mountpoint, lost), "rb").read()
        assert info.value.errno == errno.EIO
        assert open(os.path.join(c.mountpoint, kept), "rb").read() == contents[kept]
        with pytest.raises(OSError) as info:
            os.mkdir(os.path.join(c.mountpoint, "new"))
        assert info.value.errno == errno.EROFS
        assert sorted(os.listdir(c.mountpoint)) == sorted(contents)
    finally:
        c.close()
        c.launcher.close()



def wait_until_healthy(mnt: str, timeout: float = 60.0) -> None:
    """Poll the status until every data set is healthy again."""
    deadline = time.monotonic() + timeout
    while True:
        sets = status(mnt)["sets"]
        if all(s["state"] == "healthy" for s in sets):
            return
        assert time.monotonic() < deadline, f"sets did not recover: {sets}"
        time.sleep(0.05)


def assert_lost_pages(path: str, pages, old: bytes) -> None:
    """Every page of ``pages`` reads as EIO (from the daemon: the kernel's copy is dropped),
    not as ``old`` (what its set space held before)."""
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        for page in pages:
            with pytest.raises(OSError) as info:
                data = os.pread(f.fileno(), PAGE, page * PAGE)
                assert data not in old, f"page {page} reads another file's bytes"
            assert info.value.errno == errno.EIO


def test_a_lost_flush_reads_as_eio_not_as_what_its_space_held(tmp_path):
    """Pages written into space freed by a deleted file wait in the write-behind cache; the
    set dies beyond tolerance before they are flushed. Once its appliances are back and the
    set is healthy again, and after a remount, those pages read as EIO, never as the
    deleted file's bytes that the set space still holds."""
    c, _m, contents, lost, kept = lose_one_set(tmp_path)
    try:
        mnt = c.mountpoint
        os.unlink(os.path.join(mnt, lost))  # the whole dead set is free space now
        with open(os.path.join(mnt, kept), "r+b") as f:
            os.fsync(f.fileno())  # commits the delete: the space is reusable
        new = os.path.join(mnt, "new")
        pages = range(0, 256, 2)  # separate pages: each waits in the daemon's cache
        fd = os.open(new, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for page in pages:
                os.pwrite(fd, b"n" * PAGE, page * PAGE)
            push_to_daemon(fd)
            with pytest.raises(OSError) as info:
                os.fsync(fd)
            assert info.value.errno == errno.EIO
        finally:
            with pytest.raises(OSError) as info:  # close reports it too
                os.close(fd)
            assert info.value.errno == errno.EIO
        assert status(mnt)["read_only"]
        for app in c.apps:
            if not app.running:
                c.launcher.restart(app)
        wait_until_healthy(mnt)
        assert_lost_pages(new, pages, contents[lost])
        c.mounts[-1].unmount()
        c.mount()
        assert_lost_pages(new, pages, contents[lost])
        assert open(os.path.join(mnt, kept), "rb").read() == contents[kept]
        assert not status(mnt)["read_only"]  # a known loss is not a new one
    finally:
        c.close()
        c.launcher.close()
