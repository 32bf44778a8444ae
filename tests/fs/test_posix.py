"""POSIX behaviour on a real mount (mirror:2 over tcp on three appliance processes)."""
import errno
import mmap
import os
import stat
import subprocess

import pytest

pytestmark = pytest.mark.timeout(120)


def raises(code, call, *args):
    with pytest.raises(OSError) as info:
        call(*args)
    assert info.value.errno == code, f"{call.__name__}{args}: {info.value}"


def test_files_read_write_append_holes(mnt):
    p = os.path.join(mnt, "f")
    with open(p, "wb") as f:
        f.write(b"hello")
    with open(p, "ab") as f:  # O_APPEND
        f.write(b" world")
    assert open(p, "rb").read() == b"hello world"
    fd = os.open(p, os.O_RDWR)
    os.pwrite(fd, b"X", 3 << 20)  # a hole of 3 MiB
    os.close(fd)
    data = open(p, "rb").read()
    assert len(data) == (3 << 20) + 1 and data[11:(3 << 20)] == bytes((3 << 20) - 11)
    assert data[-1:] == b"X"
    assert os.stat(p).st_blocks * 512 < 1 << 20  # the hole is not stored
    raises(errno.EEXIST, os.open, p, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    raises(errno.ENOENT, os.open, os.path.join(mnt, "missing"), os.O_RDONLY)
    raises(errno.EISDIR, os.open, mnt, os.O_WRONLY)


def test_truncate_and_o_trunc(mnt):
    p = os.path.join(mnt, "t")
    data = os.urandom(50000)
    with open(p, "wb") as f:
        f.write(data)
    os.truncate(p, 5001)
    os.truncate(p, 20000)
    got = open(p, "rb").read()
    assert got[:5001] == data[:5001] and got[5001:] == bytes(20000 - 5001)
    with open(p, "wb") as f:  # O_TRUNC
        f.write(b"ab")
    assert open(p, "rb").read() == b"ab"
    assert os.stat(p).st_size == 2


def test_directories_and_readdir(mnt):
    d = os.path.join(mnt, "d")
    os.mkdir(d)
    raises(errno.EEXIST, os.mkdir, d)
    names = {f"n{i:05d}" for i in range(3000)}
    for n in names:
        open(os.path.join(d, n), "w").close()
    assert set(os.listdir(d)) == names
    assert os.stat(mnt).st_nlink == 3
    raises(errno.ENOTEMPTY, os.rmdir, d)
    raises(errno.ENOTDIR, os.rmdir, os.path.join(d, "n00001"))
    raises(errno.EISDIR, os.unlink, d)
    with os.scandir(d) as it:  # removing entries while listing: nothing twice
        seen = []
        for k, entry in enumerate(it):
            seen.append(entry.name)
            if k % 2 == 0:
                os.unlink(entry.path)
    assert len(seen) == len(set(seen))
    for n in os.listdir(d):
        os.unlink(os.path.join(d, n))
    os.rmdir(d)
    assert os.listdir(mnt) == []


def raw_entries(path) -> dict[str, int]:
    """readdir as the kernel passes it on, "." and ".." included: name -> inode number."""
    out = subprocess.run(["ls", "-a1if", path], capture_output=True, text=True, check=True)
    return {name: int(ino) for ino, name in (line.split(None, 1)
                                             for line in out.stdout.splitlines())}


def test_dot_and_dotdot(mnt):
    d = os.path.join(mnt, "d")
    os.makedirs(os.path.join(d, "sub"))
    open(os.path.join(d, "f"), "w").close()
    root = os.stat(mnt).st_ino
    assert raw_entries(d) == {".": os.stat(d).st_ino, "..": root, "sub": os.stat(
        os.path.join(d, "sub")).st_ino, "f": os.stat(os.path.join(d, "f")).st_ino}
    assert raw_entries(mnt)["."] == root  # (ls shows the mount point's own parent for "..")
    os.rename(os.path.join(d, "sub"), os.path.join(mnt, "moved"))
    assert raw_entries(os.path.join(mnt, "moved"))[".."] == root
    assert raw_entries(os.path.join(mnt, "moved", "."))["."] == raw_entries(mnt)["moved"]
    assert sorted(raw_entries(os.path.join(mnt, "moved"))) == [".", ".."]


def test_rename(mnt):
    a, b, d, e = (os.path.join(mnt, n) for n in ("a", "b", "d", "e"))
    open(a, "w").write("A")
    open(b, "w").write("B")
    os.rename(a, b)  # over a file
    assert open(b).read() == "A" and not os.path.exists(a)
    os.mkdir(d)
    os.mkdir(e)
    os.rename(d, e)  # over an empty directory
    assert not os.path.exists(d) and os.path.isdir(e)
    open(os.path.join(e, "x"), "w").close()
    os.mkdir(d)
    raises(errno.ENOTEMPTY, os.rename, d, e)
    raises(errno.EISDIR, os.rename, b, e)
    raises(errno.ENOTDIR, os.rename, e, b)
    raises(errno.EINVAL, os.rename, e, os.path.join(e, "sub"))
    os.rename(b, os.path.join(e, "moved"))  # across directories, never EXDEV
    os.rename(e, os.path.join(d, "e2"))
    assert open(os.path.join(d, "e2", "moved")).read() == "A"
    assert os.stat(d).st_nlink == 3 and os.stat(mnt).st_nlink == 3


def test_links_and_symlinks(mnt):
    p, q, s = (os.path.join(mnt, n) for n in ("p", "q", "s"))
    open(p, "w").write("data")
    os.link(p, q)
    assert os.stat(p).st_nlink == 2 and os.stat(p).st_ino == os.stat(q).st_ino
    os.unlink(p)
    assert os.stat(q).st_nlink == 1 and open(q).read() == "data"
    os.symlink("q", s)
    assert os.readlink(s) == "q" and open(s).read() == "data"
    assert stat.S_ISLNK(os.lstat(s).st_mode)
    os.mkdir(os.path.join(mnt, "dir"))
    raises(errno.EPERM, os.link, os.path.join(mnt, "dir"), os.path.join(mnt, "dir2"))


def test_unlink_open_file(mnt):
    p = os.path.join(mnt, "open")
    fd = os.open(p, os.O_CREAT | os.O_RDWR)
    os.write(fd, os.urandom(1 << 20))
    before = os.statvfs(mnt).f_bfree
    os.unlink(p)
    assert "open" not in os.listdir(mnt)
    os.pwrite(fd, b"still here", 0)
    assert os.pread(fd, 10, 0) == b"still here"
    os.close(fd)
    os.sync()
    after = os.statvfs(mnt).f_bfree
    assert after >= before  # space of the deleted file is free again (after the commit)


def test_attributes(mnt):
    p = os.path.join(mnt, "attrs")
    open(p, "w").close()
    os.chmod(p, 0o640)
    os.chown(p, 1234, 5678)
    os.utime(p, ns=(1_000_000_000, 2_000_000_000))
    st = os.stat(p)
    assert stat.S_IMODE(st.st_mode) == 0o640 and (st.st_uid, st.st_gid) == (1234, 5678)
    assert st.st_atime_ns == 1_000_000_000 and st.st_mtime_ns == 2_000_000_000
    vfs = os.statvfs(mnt)
    assert vfs.f_blocks > 0 and vfs.f_bavail > 0 and vfs.f_namemax == 255


def test_xattrs(mnt):
    p = os.path.join(mnt, "x")
    open(p, "w").close()
    os.setxattr(p, "user.color", b"blue")
    assert os.getxattr(p, "user.color") == b"blue"
    assert "user.color" in os.listxattr(p)
    os.removexattr(p, "user.color")
    raises(errno.ENODATA, os.getxattr, p, "user.color")
    raises(errno.EINVAL, os.setxattr, p, "user.resilfs.nonsense", b"1")
    raises(errno.EINVAL, os.getxattr, p, "user.resilfs.nonsense")
    assert os.listxattr(p) == []


def test_permissions_as_non_root(mnt):
    """The kernel checks permissions (default_permissions): EACCES for another user."""
    public, private = os.path.join(mnt, "public"), os.path.join(mnt, "private")
    open(public, "w").write("hello")
    open(private, "w").write("secret")
    os.chmod(private, 0o600)
    os.chmod(mnt, 0o755)

    def as_nobody(*cmd):
        return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               *cmd], capture_output=True, text=True, timeout=30)

    r = as_nobody("cat", public)
    assert r.returncode == 0 and r.stdout == "hello", r.stderr  # the mount is reachable
    r = as_nobody("cat", private)
    assert r.returncode != 0 and "Permission denied" in r.stderr
    r = as_nobody("touch", os.path.join(mnt, "new"))
    assert r.returncode != 0 and "Permission denied" in r.stderr
    assert not os.path.exists(os.path.join(mnt, "new"))


def test_mmap_shared_and_truncate(mnt):
    p = os.path.join(mnt, "m")
    with open(p, "wb") as f:
        f.write(bytes(3 * 4096))
    with open(p, "r+b") as f:
        with mmap.mmap(f.fileno(), 3 * 4096) as m:
            m[100:105] = b"mmap!"
            m[8192:8197] = b"page3"
            m.flush()
    assert open(p, "rb").read()[100:105] == b"mmap!"
    os.truncate(p, 4096 + 10)
    with open(p, "r+b") as f:
        f.truncate(3 * 4096)
        with mmap.mmap(f.fileno(), 3 * 4096) as m:
            assert m[100:105] == b"mmap!" and m[8192:8197] == bytes(5)
            assert m[4096 + 10:] == bytes(3 * 4096 - 4096 - 10)


def test_fsync_survives_daemon_kill(fs_cluster):
    fs_cluster.mount()
    mnt = fs_cluster.mountpoint
    data = os.urandom(300_000)
    with open(os.path.join(mnt, "durable"), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.mkdir(os.path.join(mnt, "dir"))
    fd = os.open(mnt, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    fs_cluster.mounts[-1].kill()
    fs_cluster.mount()
    assert open(os.path.join(mnt, "durable"), "rb").read() == data
    assert os.path.isdir(os.path.join(mnt, "dir"))


def test_everything_survives_clean_unmount(fs_cluster):
    fs_cluster.mount()
    mnt = fs_cluster.mountpoint
    files = {f"f{i}": os.urandom(i * 1000) for i in range(50)}
    for name, data in files.items():
        open(os.path.join(mnt, name), "wb").write(data)
    os.setxattr(os.path.join(mnt, "f1"), "user.k", b"v")
    fs_cluster.remount()
    for name, data in files.items():
        assert open(os.path.join(mnt, name), "rb").read() == data
    assert os.getxattr(os.path.join(mnt, "f1"), "user.k") == b"v"


def test_umount_command_and_bad_input(fs_cluster):
    from tests.fs.mounting import run_cli
    m = fs_cluster.mount()
    open(os.path.join(fs_cluster.mountpoint, "kept"), "w").write("yes")
    r = run_cli("umount", fs_cluster.mountpoint)
    assert r.returncode == 0, r.stderr
    assert m.process.wait(30) == 0 and not os.path.ismount(fs_cluster.mountpoint)
    r = run_cli("umount", fs_cluster.mountpoint)
    assert r.returncode == 1 and "not mounted" in r.stderr
    r = run_cli("mkfs", fs_cluster.cluster)  # formatted already
    assert r.returncode == 1 and "--force" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("mkfs", fs_cluster.cluster, "--scheme", "ec:0+1")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    for codec in ("xor", "nonesuch"):  # xor cannot do ec; nonesuch does not exist
        r = run_cli("mkfs", fs_cluster.cluster, "--force", "--scheme", "ec:2+1", "--codec", codec)
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and codec in r.stderr, r.stderr
    r = run_cli("mount", "/nonexistent.toml", fs_cluster.mountpoint)
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    r = run_cli("mount", fs_cluster.cluster, fs_cluster.mountpoint, "-o", "max_read=1")
    assert r.returncode == 1 and "unsupported mount option" in r.stderr
    fs_cluster.mount()
    assert open(os.path.join(fs_cluster.mountpoint, "kept")).read() == "yes"
    assert fs_cluster.mounts[-1].unmount() == 0
    r = run_cli("mkfs", fs_cluster.cluster, "--force")
    assert r.returncode == 0, r.stderr
    fs_cluster.mount()
    assert os.listdir(fs_cluster.mountpoint) == []


def test_background_mount(fs_cluster):
    import re
    import signal
    import subprocess as sp

    from tests.fs.mounting import run_cli
    r = run_cli("mount", fs_cluster.cluster, fs_cluster.mountpoint)
    pid = int(re.search(r"pid (\d+)", r.stdout).group(1)) if r.returncode == 0 else None
    try:
        assert r.returncode == 0, r.stderr
        assert os.path.ismount(fs_cluster.mountpoint)
        assert run_cli("umount", fs_cluster.mountpoint).returncode == 0
        assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read()
    finally:
        sp.run(["fusermount3", "-u", "-z", fs_cluster.mountpoint], capture_output=True)
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
