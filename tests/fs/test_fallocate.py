"""fallocate(2) on a real mount, as tmpfs has it: mode 0 and KEEP_SIZE map zero-filled
space, PUNCH_HOLE frees whole pages (df shows the space at once), ZERO_RANGE zeroes; other
modes are EOPNOTSUPP. The results hold after a remount."""
import ctypes
import errno
import os
import shutil
import tempfile
import time

import pytest

from resilfs.appliance.launcher import ApplianceLauncher
from tests.fs.conftest import FsCluster
from tests.fs.mounting import run_cli, write_cluster

pytestmark = pytest.mark.timeout(300)

KEEP_SIZE, PUNCH_HOLE, COLLAPSE_RANGE, ZERO_RANGE, INSERT_RANGE = 0x01, 0x02, 0x08, 0x10, 0x20
MiB = 1 << 20
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, mode, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def allocated(path: str) -> int:
    return os.stat(path).st_blocks * 512


def free_bytes(mnt: str) -> int:
    st = os.statvfs(mnt)
    return st.f_bavail * st.f_frsize


def check(path: str, model: bytes) -> None:
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # read from the daemon
        assert f.read() == model


def test_fallocate_modes(fs_cluster):
    c = fs_cluster
    mnt = c.mount().mountpoint
    path = os.path.join(mnt, "f")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fallocate(fd, KEEP_SIZE, 0, 4 * MiB)  # space for later writes, size stays
        assert os.fstat(fd).st_size == 0
        assert allocated(path) >= 4 * MiB
        fallocate(fd, 0, 0, 8 * MiB)
        assert os.fstat(fd).st_size == 8 * MiB
        assert allocated(path) >= 8 * MiB
        model = bytearray(8 * MiB)
        check(path, bytes(model))
        data = os.urandom(8 * MiB)
        os.pwrite(fd, data, 0)
        model[:] = data
        os.fsync(fd)
        before = free_bytes(mnt)
        fallocate(fd, PUNCH_HOLE | KEEP_SIZE, MiB + 100, 4 * MiB)
        model[MiB + 100:5 * MiB + 100] = bytes(4 * MiB)
        assert os.fstat(fd).st_size == 8 * MiB
        assert allocated(path) <= 8 * MiB - 4 * MiB + 4096
        assert free_bytes(mnt) >= before + 4 * MiB - 4096  # free at once
        check(path, bytes(model))
        fallocate(fd, ZERO_RANGE | KEEP_SIZE, 6 * MiB + 7, 4 * MiB)  # past the end too
        model[6 * MiB + 7:] = bytes(len(model) - 6 * MiB - 7)
        assert os.fstat(fd).st_size == 8 * MiB
        fallocate(fd, ZERO_RANGE, 7 * MiB, 2 * MiB)  # grows the file
        model.extend(bytes(MiB))
        assert os.fstat(fd).st_size == 9 * MiB
        check(path, bytes(model))
        for mode in (COLLAPSE_RANGE, INSERT_RANGE, PUNCH_HOLE):
            with pytest.raises(OSError) as info:
                fallocate(fd, mode, 0, MiB)
            assert info.value.errno == errno.EOPNOTSUPP
        check(path, bytes(model))  # refused modes changed nothing
        os.posix_fallocate(fd, 12 * MiB, MiB)
        model.extend(bytes(4 * MiB))
        assert os.fstat(fd).st_size == 13 * MiB
        os.fsync(fd)
    finally:
        os.close(fd)
    c.remount()
    check(path, bytes(model))


def region_bytes(persist_dirs) -> int:
    """Memory the appliances' regions take (their persisted files, on a tmpfs)."""
    total = 0
    for d in persist_dirs:
        regions = os.path.join(d, "regions")
        for name in os.listdir(regions):
            if name.endswith(".data"):
                total += os.stat(os.path.join(regions, name)).st_blocks * 512
    return total


@pytest.mark.parametrize("scheme", ["mirror:2", "ec:2+1"])
def test_punch_hole_gives_appliance_memory_back(tmp_path, scheme):
    """Appliances keep their regions in /dev/shm, so a region file's blocks are the memory
    it takes. Punching a hole frees the memory of the whole stripes in it."""
    shm = tempfile.mkdtemp(prefix="resilfs-test-", dir="/dev/shm")
    launcher = ApplianceLauncher(os.path.join(str(tmp_path), "appliances"))
    try:
        apps = launcher.start(3, persist=True, persist_root=shm, capacity="64M")
        cluster = write_cluster(str(tmp_path), launcher, apps)
        r = run_cli("mkfs", cluster, "--scheme", scheme, "--set-size", "16M")
        assert r.returncode == 0, r.stderr
        c = FsCluster(str(tmp_path), launcher, apps, cluster)
        try:
            mnt = c.mount().mountpoint
            path = os.path.join(mnt, "f")
            data = bytearray(os.urandom(12 * MiB))
            with open(path, "wb") as f:
                f.write(data)
                os.fsync(f.fileno())
            dirs = [a.persist_dir for a in apps]
            before = region_bytes(dirs)
            with open(path, "r+b") as f:
                fallocate(f.fileno(), PUNCH_HOLE | KEEP_SIZE, 2 * MiB, 8 * MiB)
                os.fsync(f.fileno())
            data[2 * MiB:10 * MiB] = bytes(8 * MiB)
            width, k = (2, 1) if scheme == "mirror:2" else (3, 2)  # members, data chunks
            assert before - region_bytes(dirs) >= width * (8 * MiB // k - 256 * 1024)
            check(path, bytes(data))
            c.remount()
            check(path, bytes(data))
            with open(path, "r+b") as f:  # the freed space is written again
                f.write(os.urandom(12 * MiB))
                os.fsync(f.fileno())
            full = region_bytes(dirs)
            os.unlink(path)  # the memory of a deleted file goes back too, in the background
            deadline = time.monotonic() + 60
            while full - region_bytes(dirs) < width * (12 * MiB // k - 256 * 1024):
                assert time.monotonic() < deadline, "the deleted file's memory stayed"
                time.sleep(0.05)
        finally:
            c.close()
    finally:
        launcher.close()
        shutil.rmtree(shm, ignore_errors=True)
