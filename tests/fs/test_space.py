"""Space at its limits on real mounts with small appliances: what df shows can be written,
space freed by rm is usable at once, and a write that cannot be stored fails with ENOSPC."""
import errno
import os

import pytest

from tests.fs.conftest import make_cluster

pytestmark = pytest.mark.timeout(300)

MiB = 1 << 20


@pytest.fixture
def small(tmp_path):
    """mirror:2 over three appliances of 24 MiB, in sets of 8 MiB: 32 MiB of file data."""
    c = make_cluster(tmp_path, count=3, scheme="mirror:2", capacity="24M",
                     mkfs_args=("--set-size", "8M"))
    try:
        c.mount()
        yield c
    finally:
        c.close()
        c.launcher.close()


def fill(path: str, limit: int = 256 * MiB) -> int:
    """Write 1 MiB pieces to ``path``, each fsync'd, until ENOSPC; return the bytes that
    fit. Fails if ``limit`` bytes fit."""
    chunk = os.urandom(MiB)
    written = 0
    with open(path, "wb") as f:
        while written < limit:
            try:
                f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                f.truncate(written)
                return written
            written += MiB
    raise AssertionError(f"{limit} bytes fit: the filesystem never filled")


def free_bytes(mnt: str) -> int:
    st = os.statvfs(mnt)
    return st.f_bavail * st.f_frsize


def test_space_freed_by_rm_is_usable_at_once(small):
    mnt = small.mountpoint
    with open(os.path.join(mnt, "a"), "wb") as f:
        f.write(os.urandom(16 * MiB))
        os.fsync(f.fileno())
    assert fill(os.path.join(mnt, "fill")) > 0
    os.unlink(os.path.join(mnt, "a"))
    assert free_bytes(mnt) >= 16 * MiB  # df shows the freed space at once
    data = os.urandom(16 * MiB)
    with open(os.path.join(mnt, "b"), "wb") as f:  # no wait for a background commit
        f.write(data)
        os.fsync(f.fileno())
    with open(os.path.join(mnt, "b"), "rb") as f:
        assert f.read() == data


def test_the_free_space_df_shows_can_be_written(tmp_path):
    """ec:4+2 over seven appliances: every set needs six of them, so sets must go where
    the room is, and df must count only sets that fit."""
    c = make_cluster(tmp_path, count=7, scheme="ec:4+2", capacity="24M",
                     mkfs_args=("--set-size", "4M"))
    try:
        mnt = c.mount().mountpoint
        free = free_bytes(mnt)
        assert free >= 64 * MiB
        data = os.urandom(free)
        with open(os.path.join(mnt, "f"), "wb") as f:
            f.write(data)
            os.fsync(f.fileno())
        with open(os.path.join(mnt, "f"), "rb") as f:
            assert f.read() == data
        c.remount()  # no cached capacity figure
        assert free_bytes(mnt) < 4 * MiB  # less than a set: nothing more fits
    finally:
        c.close()
        c.launcher.close()


def test_write_gets_enospc_once_its_data_cannot_be_stored(small):
    """On a full filesystem write(2) itself fails, not only fsync or close (the kernel's
    writeback cache would take the data and drop it later)."""
    mnt = small.mountpoint
    fill(os.path.join(mnt, "fill"))
    chunk = os.urandom(MiB)
    fd = os.open(os.path.join(mnt, "more"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with pytest.raises(OSError) as info:
            for _ in range(64):
                os.write(fd, chunk)
        assert info.value.errno == errno.ENOSPC
    finally:
        try:
            os.close(fd)
        except OSError as exc:  # close may report it again
            assert exc.errno == errno.ENOSPC
    os.unlink(os.path.join(mnt, "fill"))
    with open(os.path.join(mnt, "more"), "ab") as f:  # room again: writes work
        f.write(chunk)
        os.fsync(f.fileno())
