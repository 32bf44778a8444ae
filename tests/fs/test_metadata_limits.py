"""Every field a user sets, at and beyond the edge of its range, on a real mount.

A value is either stored exactly (and reads back after a remount) or refused by the
operation that sets it, with the errno a Linux filesystem gives; a refused value changes
nothing and never stops later metadata from being committed (issue 16, defect 1).
"""
import errno
import os
import stat

import pytest

pytestmark = pytest.mark.timeout(180)

I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1
U32_MAX = (1 << 32) - 1


def _errno_of(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except OSError as exc:
        return exc.errno
    return 0


def _write_fsync(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        os.fsync(f.fileno())


def test_unstorable_timestamp_is_refused_and_later_metadata_commits(fs_cluster):
    """``touch -d`` far outside the journal's range used to poison every later commit:
    fsync answered EIO forever and a remount lost every file created after it."""
    mnt = fs_cluster.mount().mountpoint
    _write_fsync(os.path.join(mnt, "before"), b"before")
    victim = os.path.join(mnt, "victim")
    _write_fsync(victim, b"v")
    before = os.stat(victim)
    far = 32503680000 * 10**9  # year 3000 in ns: beyond a signed 64-bit ns count
    refused = [_errno_of(os.utime, victim, ns=(far, far)),
               _errno_of(os.utime, victim, ns=(-far, 0))]
    # unrelated changes still become durable (these fsyncs answered EIO before the fix)
    _write_fsync(os.path.join(mnt, "after"), b"after")
    os.mkdir(os.path.join(mnt, "dir"))
    fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fs_cluster.mounts[-1].kill()  # a crash: only what fsync made durable survives
    mnt = fs_cluster.mount().mountpoint
    for name, data in (("before", b"before"), ("after", b"after"), ("victim", b"v")):
        with open(os.path.join(mnt, name), "rb") as f:
            assert f.read() == data
    assert os.path.isdir(os.path.join(mnt, "dir"))
    assert refused == [errno.EOVERFLOW, errno.EOVERFLOW]
    assert os.stat(os.path.join(mnt, "victim")).st_mtime_ns == before.st_mtime_ns


def test_fields_at_their_edges_survive_a_remount(fs_cluster):
    mnt = fs_cluster.mount().mountpoint
    p = lambda *names: os.path.join(mnt, *names)  # noqa: E731
    # timestamps: the whole signed 64-bit ns range is stored; one past it is refused
    for name, (atime, mtime) in {"tmin": (I64_MIN, I64_MIN), "tmax": (I64_MAX, I64_MAX),
                                 "tmix": (-1, 0)}.items():
        _write_fsync(p(name), b"")
        os.utime(p(name), ns=(atime, mtime))
    assert _errno_of(os.utime, p("tmax"), ns=(I64_MAX + 1, 0)) == errno.EOVERFLOW
    assert _errno_of(os.utime, p("tmax"), ns=(0, I64_MIN - 1)) == errno.EOVERFLOW
    # sizes: the largest the kernel lets a file have, by truncate and by a write at the end
    _write_fsync(p("huge"), b"")
    os.truncate(p("huge"), I64_MAX)
    with open(p("far"), "wb") as f:
        f.seek(I64_MAX - 4096)
        f.write(b"x" * 4096)
    assert _errno_of(os.truncate, p("huge"), -1) == errno.EINVAL
    # modes, owners
    _write_fsync(p("modes"), b"")
    os.chmod(p("modes"), 0o7777)
    os.mknod(p("node"), stat.S_IFCHR | 0o600, os.makedev(4095, (1 << 20) - 1))
    _write_fsync(p("owned"), b"")
    os.chown(p("owned"), U32_MAX - 1, U32_MAX - 1)  # -1 (U32_MAX) means "unchanged"
    # names, symlink targets, extended attributes: at the limit stored, past it refused
    long_name = b"n" * 255
    _write_fsync(os.path.join(mnt.encode(), long_name), b"")
    assert _errno_of(open, os.path.join(mnt.encode(), long_name + b"n"), "wb") == \
        errno.ENAMETOOLONG
    target = "t" * 4095
    os.symlink(target, p("link"))
    assert _errno_of(os.symlink, target + "t", p("link2")) == errno.ENAMETOOLONG
    xname = "user." + "x" * 250
    os.setxattr(p("modes"), xname, b"v" * 65536)
    assert _errno_of(os.setxattr, p("modes"), xname + "x", b"v") == errno.ERANGE
    assert _errno_of(os.setxattr, p("modes"), "user.big", b"v" * 65537) == errno.E2BIG
    os.setxattr(p("modes"), "user.empty", b"")
    expected = {name: os.lstat(p(name)) for name in
                ("tmin", "tmax", "tmix", "huge", "far", "modes", "node", "owned", "link")}

    mnt = fs_cluster.remount().mountpoint
    for name, was in expected.items():
        now = os.lstat(p(name))
        for field in ("st_mode", "st_uid", "st_gid", "st_size", "st_rdev", "st_atime_ns",
                      "st_mtime_ns", "st_nlink"):
            assert getattr(now, field) == getattr(was, field), (name, field)
    assert os.stat(p("tmin")).st_mtime_ns == I64_MIN
    assert os.stat(p("tmax")).st_atime_ns == I64_MAX
    assert os.stat(p("huge")).st_size == I64_MAX
    assert os.stat(p("far")).st_size == I64_MAX
    with open(p("far"), "rb") as f:
        f.seek(I64_MAX - 4096 - 10)
        assert f.read(20) == bytes(10) + b"x" * 10
    assert stat.S_IMODE(os.stat(p("modes")).st_mode) == 0o7777
    assert os.stat(p("owned")).st_uid == U32_MAX - 1
    assert os.stat(p("node")).st_rdev == os.makedev(4095, (1 << 20) - 1)
    assert os.path.exists(os.path.join(mnt.encode(), long_name))
    assert os.readlink(p("link")) == target
    assert os.getxattr(p("modes"), xname) == b"v" * 65536
    assert os.getxattr(p("modes"), "user.empty") == b""
