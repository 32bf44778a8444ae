"""fallocate(2) on a real mount, as tmpfs has it: mode 0 and KEEP_SIZE map zero-filled
space, PUNCH_HOLE frees whole pages (df shows the space at once), ZERO_RANGE zeroes; other
modes are EOPNOTSUPP. The results hold after a remount."""
import ctypes
import errno
import os

import pytest

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
