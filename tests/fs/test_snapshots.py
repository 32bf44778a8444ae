"""Snapshots through xattrs on real mounts: create, read-only view, list, restore, delete,
consistency under concurrent writes, no data over the transport, degraded sets, ENOSPC,
remount and daemon SIGKILL, and every bad input (errno, nothing changed)."""
import errno
import json
import mmap
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from resilfs.appliance.launcher import ApplianceLauncher, free_port
from resilfs.fs.backing import CAPACITY_CACHE
from tests.fs.conftest import FsCluster, make_cluster
from tests.fs.mounting import run_cli, write_cluster

pytestmark = pytest.mark.timeout(300)

SNAP = "user.resilfs.snapshot"
LIST = "user.resilfs.snapshots"
DELETE = "user.resilfs.snapshot.delete"
RESTORE = "user.resilfs.snapshot.restore"


def raises(code, call, *args):
    with pytest.raises(OSError) as info:
        call(*args)
    assert info.value.errno == code, f"{call.__name__}{args}: {info.value}"


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_uncached(path) -> bytes:
    """Read after dropping the file's clean pages: from the sets, not the page cache."""
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        return f.read()


def listing(mnt, path=None):
    return json.loads(os.getxattr(path or mnt, LIST))


def tree(root):
    """Everything a snapshot must keep: names, types, modes, sizes, mtimes, contents."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in dirnames + sorted(filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            out[rel] = (st.st_mode, st.st_size, st.st_mtime_ns,
                        read(p) if os.path.isfile(p) and not os.path.islink(p) else
                        (os.readlink(p) if os.path.islink(p) else None))
    return out


def raw_listing(path) -> list[str]:
    """What readdir returns, "." and ".." included if the filesystem lists them."""
    out = subprocess.run(["ls", "-af", path], capture_output=True, text=True, check=True)
    return sorted(out.stdout.split())


def wait_for(check, timeout=30.0, interval=0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def free_bytes(mnt) -> int:
    st = os.statvfs(mnt)
    return st.f_bavail * st.f_frsize


@pytest.fixture
def cluster(tmp_path):
    c = make_cluster(tmp_path, count=3, scheme="mirror:2", capacity="512M",
                     mkfs_args=("--set-size", "32M"))
    try:
        yield c
    finally:
        c.close()
        c.launcher.close()


def test_snapshot_modify_restore_delete(cluster):
    mnt = cluster.mount().mountpoint
    p = os.path.join(mnt, "f")
    original = os.urandom((3 << 20) + 123)
    with open(p, "wb") as f:
        f.write(original)
    os.chmod(p, 0o640)
    os.setxattr(p, "user.color", b"blue")
    before = os.stat(p)
    os.setxattr(p, SNAP, b"s1")
    s = os.path.join(mnt, ".snapshots", "s1")
    st = os.stat(s)
    assert (st.st_size, st.st_mode, st.st_mtime_ns, st.st_uid) == \
        (before.st_size, before.st_mode, before.st_mtime_ns, before.st_uid)
    assert read(s) == original
    assert os.getxattr(s, "user.color") == b"blue"
    # modify the live file: the snapshot keeps the old content
    with open(p, "r+b") as f:
        f.write(b"X" * 5000)
        f.seek(0, 2)
        f.write(b"tail")
    assert read(p)[:5000] == b"X" * 5000
    assert read(s) == original
    # read-only view, mmap-able
    raises(errno.EROFS, open, s, "r+b")
    raises(errno.EROFS, os.truncate, s, 0)
    raises(errno.EROFS, os.unlink, s)
    raises(errno.EROFS, os.mkdir, os.path.join(mnt, ".snapshots", "x"))
    raises(errno.EROFS, os.rename, p, os.path.join(mnt, ".snapshots", "y"))
    raises(errno.EROFS, os.rmdir, os.path.join(mnt, ".snapshots"))
    raises(errno.EROFS, os.setxattr, s, "user.color", b"red")
    with open(s, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        assert m[:] == original
    # list: the file, the root
    [entry] = listing(mnt, p)
    assert entry["name"] == "s1" and entry["size"] == len(original)
    assert entry["type"] == "file" and abs(entry["time"] - time.time()) < 60
    assert [e["name"] for e in listing(mnt)] == ["s1"]
    # restore
    os.setxattr(p, RESTORE, b"s1")
    got = read(p)
    diff = next((i for i in range(min(len(got), len(original))) if got[i] != original[i]), None)
    assert got == original, (len(got), len(original), diff)
    st = os.stat(p)
    assert (st.st_size, st.st_mode & 0o7777, st.st_mtime_ns) == \
        (len(original), 0o640, before.st_mtime_ns)
    # the split set regains its member in the background: short of it (degraded), then
    # rebuilding, then healthy
    status = json.loads(os.getxattr(mnt, "user.resilfs.status"))
    assert all(s["state"] in ("degraded", "rebuilding", "healthy") for s in status["sets"])
    assert wait_for(lambda: all(s["state"] == "healthy" for s in json.loads(
        os.getxattr(mnt, "user.resilfs.status"))["sets"]), 60)
    time.sleep(CAPACITY_CACHE + 0.5)  # statfs's figure from before the rebuild expires
    free_with = free_bytes(mnt)
    os.setxattr(mnt, DELETE, b"s1")
    assert not os.path.exists(s)
    assert os.listdir(os.path.join(mnt, ".snapshots")) == []
    assert listing(mnt) == []
    assert wait_for(lambda: free_bytes(mnt) >= free_with + (16 << 20), 30), \
        (free_with, free_bytes(mnt), os.getxattr(mnt, "user.resilfs.status"))
    assert read(p) == original


def test_bad_input_changes_nothing(cluster):
    mnt = cluster.mount().mountpoint
    p = os.path.join(mnt, "f")
    with open(p, "wb") as f:
        f.write(b"data" * 1000)
    os.setxattr(p, SNAP, b"one")
    snaps = os.path.join(mnt, ".snapshots")

    def state():
        return tree(mnt), listing(mnt), free_bytes(mnt) // (1 << 20)

    before = state()
    raises(errno.EEXIST, os.setxattr, p, SNAP, b"one")
    raises(errno.ENOENT, os.setxattr, mnt, DELETE, b"nope")
    raises(errno.ENOENT, os.setxattr, p, RESTORE, b"nope")
    for bad in (b"a/b", b"", b"/", b".", b".."):
        raises(errno.EINVAL, os.setxattr, p, SNAP, bad)
        raises(errno.EINVAL, os.setxattr, mnt, DELETE, bad)
    raises(errno.EINVAL, os.setxattr, os.path.join(snaps, "one"), SNAP, b"two")
    raises(errno.EINVAL, os.setxattr, snaps, SNAP, b"two")
    raises(errno.EINVAL, os.setxattr, os.path.join(snaps, "one"), RESTORE, b"one")
    raises(errno.EINVAL, os.setxattr, mnt, RESTORE, b"one")  # a file snapshot onto a dir
    raises(errno.EINVAL, os.setxattr, mnt, LIST, b"x")
    raises(errno.EINVAL, os.getxattr, mnt, SNAP)
    assert state() == before
    # outside the mount: setfattr itself cannot reach us; the CLI refuses it
    r = run_cli("snapshot", "create", "/tmp", "x")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert state() == before


def test_snapshot_while_writing(cluster):
    """A writer rewrites the whole file with version stamps (O_DIRECT: each version is one
    request); the snapshot equals exactly one version, completed in time."""
    mnt = cluster.mount().mountpoint
    p = os.path.join(mnt, "v")
    size = 256 << 10
    log_path = os.path.join(cluster.workdir, "versions")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, p, str(size), log_path])
    try:
        assert wait_for(lambda: os.path.exists(log_path) and os.path.getsize(log_path) > 200)
        for k in range(5):
            start = time.time()
            os.setxattr(p, SNAP, f"w{k}".encode())
            end = time.time()
            data = read(os.path.join(mnt, ".snapshots", f"w{k}"))
            assert len(data) == size
            stamps = set(re.findall(rb"<v(\d+)>", data))
            assert len(stamps) == 1, sorted(stamps)[:5]
            version = int(stamps.pop())
            assert data == stamp(version, size)
            done = parse_log(log_path)
            # every version completed before the call started is in (or a later one) ...
            before = [v for v, t in done.items() if t < start]
            assert not before or version >= max(before)
            # ... and it had started before the call returned: at most the one in flight
            # after the last version completed before the return
            assert version <= max((v for v, t in done.items() if t <= end), default=0) + 1
            logged = os.path.getsize(log_path)  # the next snapshot sees the writer go on
            assert wait_for(lambda n=logged: os.path.getsize(log_path) > n)
    finally:
        writer.terminate()
        writer.wait(10)


WRITER = r"""
import mmap, os, sys, time
path, size, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
buf = mmap.mmap(-1, size)
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
with open(log, "w", buffering=1) as out:
    v = 0
    while True:
        v += 1
        block = (b"<v%d>" % v).ljust(64, b".")
        buf[:] = block * (size // 64)
        os.pwrite(fd, buf, 0)
        out.write("%d %.6f\n" % (v, time.time()))
"""


def stamp(version: int, size: int) -> bytes:
    return (b"<v%d>" % version).ljust(64, b".") * (size // 64)


def parse_log(path):
    out = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2:
                out[int(parts[0])] = float(parts[1])
    return out


def test_snapshot_of_a_file_on_several_sets_is_one_instant(cluster):
    """A 70 MiB file spans three 32 MiB mirror:2 sets (each is cloned); a writer stamps
    version v on one block in
    each, in file order (O_DIRECT, one request each), so at any instant the blocks read
    (v, v, v), (v, v-1, v-1) or (v, v, v-1). Snapshots under the writer show exactly that,
    and the rest of the file as it was."""
    mnt = cluster.mount().mountpoint
    p = os.path.join(mnt, "multi")
    base = os.urandom(70 << 20)
    with open(p, "wb") as f:
        f.write(base)
    offsets = [0, 35 << 20, (70 << 20) - 4096]
    log_path = os.path.join(cluster.workdir, "multi-versions")
    writer = subprocess.Popen([sys.executable, "-c", BLOCK_WRITER, p, log_path,
                               *map(str, offsets)])
    try:
        assert wait_for(lambda: os.path.exists(log_path) and os.path.getsize(log_path) > 100)
        for k in range(5):
            os.setxattr(p, SNAP, f"m{k}".encode())
            data = read(os.path.join(mnt, ".snapshots", f"m{k}"))
            versions = []
            for off in offsets:
                block = data[off:off + 4096]
                v = int(re.match(rb"<v(\d+)>", block).group(1))
                assert block == stamp(v, 4096), off
                versions.append(v)
            assert versions[0] >= versions[1] >= versions[2] >= versions[0] - 1, versions
            expected = bytearray(base)
            for off in offsets:
                expected[off:off + 4096] = data[off:off + 4096]
            assert data == expected
            os.setxattr(mnt, DELETE, f"m{k}".encode())  # clones take room: give it back
            logged = os.path.getsize(log_path)  # the next snapshot sees the writer go on
            assert wait_for(lambda n=logged: os.path.getsize(log_path) > n)
        log = cluster.mounts[-1].log_tail(100)
        assert "sets [1, 2, 3] (data-1: clone, data-2: clone, data-3: clone)" in log, log
    finally:
        writer.terminate()
        writer.wait(10)


BLOCK_WRITER = r"""
import mmap, os, sys
path, log, offsets = sys.argv[1], sys.argv[2], [int(a) for a in sys.argv[3:]]
buf = mmap.mmap(-1, 4096)
fd = os.open(path, os.O_RDWR | os.O_DIRECT)
with open(log, "w", buffering=1) as out:
    v = 0
    while True:
        v += 1
        buf[:] = (b"<v%d>" % v).ljust(64, b".") * 64
        for off in offsets:
            os.pwrite(fd, buf, off)
        out.write("%d\n" % v)
"""


def test_directory_snapshot_survives_remount_and_kill(cluster):
    mnt = cluster.mount().mountpoint
    d = os.path.join(mnt, "d")
    os.makedirs(os.path.join(d, "sub", "deeper"))
    for i in range(50):
        with open(os.path.join(d, "sub" if i % 2 else "", f"f{i}"), "wb") as f:
            f.write(os.urandom(i * 1000))
    with open(os.path.join(d, "sub", "deeper", "big"), "wb") as f:
        f.write(os.urandom(5 << 20))
    os.symlink("f1", os.path.join(d, "link"))
    # written back first: a page the kernel writes back while the snapshot is taken can
    # stamp the daemon's mtime later than the one the kernel shows (an open defect: with
    # the writeback cache the daemon sets mtime at each WRITE; failed 1 run in 4 here)
    os.sync()
    expected = tree(d)
    raw = {p: raw_listing(os.path.join(d, p)) for p in ("", "sub", "sub/deeper")}
    os.setxattr(d, SNAP, b"tree")
    view = os.path.join(mnt, ".snapshots", "tree")
    assert tree(view) == expected
    # readdir answers as in the live tree ("." and ".." included)
    assert {p: raw_listing(os.path.join(view, p)) for p in raw} == raw
    dots = {".", ".."}
    assert dots & set(raw_listing(os.path.join(mnt, ".snapshots"))) == dots & set(
        raw_listing(mnt)) == dots & set(raw["sub"])
    # change the live tree, snapshot stays
    os.unlink(os.path.join(d, "f0"))
    with open(os.path.join(d, "sub", "f1"), "ab") as f:
        f.write(b"more")
    os.mkdir(os.path.join(d, "new"))
    assert tree(view) == expected
    [entry] = listing(mnt, os.path.join(d, "sub", "deeper", "big"))
    assert entry["name"] == "tree" and entry["type"] == "directory"
    # remount
    cluster.remount()
    assert tree(view) == expected
    # a snapshot, then SIGKILL of the daemon: it is there after the next mount
    os.setxattr(os.path.join(d, "sub", "deeper", "big"), SNAP, b"big")
    big = read(os.path.join(d, "sub", "deeper", "big"))
    cluster.mounts[-1].kill()
    cluster.mount()
    assert read(os.path.join(mnt, ".snapshots", "big")) == big
    assert tree(view) == expected
    # restore the tree
    os.setxattr(d, RESTORE, b"tree")
    assert tree(d) == expected
    os.setxattr(mnt, DELETE, b"tree")
    os.setxattr(mnt, DELETE, b"big")
    assert os.listdir(os.path.join(mnt, ".snapshots")) == []
    cluster.remount()
    assert os.listdir(os.path.join(mnt, ".snapshots")) == []
    assert tree(d) == expected


@pytest.mark.parametrize("member", [0, 1])
def test_snapshot_while_an_appliance_is_down(tmp_path, member):
    """Killed just before the call (the set has not noticed): either member; the survey
    finds it, the other member is cloned, the snapshot is right and the file stays whole."""
    c = make_cluster(tmp_path, count=3, scheme="mirror:2", capacity="256M",
                     mkfs_args=("--set-size", "16M"))
    try:
        mnt = c.mount().mountpoint
        p = os.path.join(mnt, "f")
        data = os.urandom(4 << 20)
        with open(p, "wb") as f:
            f.write(data)
            os.fsync(f.fileno())
        members = re.findall(r"created set testfs/data-1: mirror:2, \d+ bytes on (.*)",
                             c.mounts[-1].log_tail(200))[0].split(", ")
        victim = next(a for a in c.apps if a.address == members[member])
        c.launcher.kill(victim)
        try:
            os.setxattr(p, SNAP, b"degraded")
        except OSError as exc:  # allowed: a clean refusal with nothing changed
            assert exc.errno in (errno.EIO, errno.ENOSPC, errno.EAGAIN)
            assert not os.path.exists(os.path.join(mnt, ".snapshots", "degraded"))
        else:
            assert read(os.path.join(mnt, ".snapshots", "degraded")) == data
            assert "cloned in their appliances" in c.mounts[-1].log_tail(200)
            assert read_uncached(os.path.join(mnt, ".snapshots", "degraded")) == data
        assert read_uncached(p) == data
        with open(p, "r+b") as f:  # the live file still takes writes
            f.write(b"after")
            os.fsync(f.fileno())
        assert read_uncached(p) == b"after" + data[5:]
    finally:
        c.close()
        c.launcher.close()


def test_no_room_for_a_snapshot_is_enospc(tmp_path):
    c = make_cluster(tmp_path, count=3, scheme="mirror:2", capacity="64M",
                     mkfs_args=("--set-size", "32M"))
    try:
        mnt = c.mount().mountpoint
        for i in range(3):  # three 32 MiB mirror:2 sets fill 3 x 64 MiB
            with open(os.path.join(mnt, f"f{i}"), "wb") as f:
                f.write(os.urandom(24 << 20))
        p = os.path.join(mnt, "f0")
        before = tree(mnt)
        raises(errno.ENOSPC, os.setxattr, p, SNAP, b"full")
        assert tree(mnt) == before and listing(mnt) == []
        assert not os.path.exists(os.path.join(mnt, ".snapshots", "full"))
    finally:
        c.close()
        c.launcher.close()


@pytest.mark.parametrize("scheme", ["parity:2+1", "ec:2+1"])
def test_coded_snapshot_clones_members(tmp_path, scheme):
    """Parity/ec: each member is cloned inside its appliance; the snapshot keeps the
    redundancy (it reads back with one of its appliances killed)."""
    c = make_cluster(tmp_path, count=3, scheme=scheme, capacity="256M",
                     mkfs_args=("--set-size", "16M"))
    try:
        mnt = c.mount().mountpoint
        p = os.path.join(mnt, "f")
        data = os.urandom((2 << 20) + 77)
        with open(p, "wb") as f:
            f.write(data)
        os.setxattr(p, SNAP, b"p")
        with open(p, "r+b") as f:
            f.write(os.urandom(1 << 20))
        assert read(os.path.join(mnt, ".snapshots", "p")) == data
        assert "cloned in their appliances" in c.mounts[-1].log_tail(100)
        os.setxattr(p, RESTORE, b"p")
        assert read(p) == data
        os.setxattr(os.path.join(mnt, "f"), SNAP, b"q")
        c.launcher.kill(c.apps[2])  # the journal keeps 2 of 3; each set loses one member
        assert read_uncached(os.path.join(mnt, ".snapshots", "q")) == data
        assert read_uncached(os.path.join(mnt, ".snapshots", "p")) == data
        os.setxattr(mnt, DELETE, b"p")
    finally:
        c.close()
        c.launcher.close()


def _metrics_bytes(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(v) for v in re.findall(
        r'^resilfs_appliance_bytes_total\{[^}]*\} ([0-9.e+]+)$', text, re.M))


def _status(mnt) -> dict:
    return json.loads(os.getxattr(mnt, "user.resilfs.status"))


def _snapshot_frozen_after(daemon, path, name, ports):
    """Snapshot ``path``; the daemon is stopped (SIGSTOP) the moment the call returns, so
    the appliance byte counters see the call and nothing of the background work after
    it. Returns the bytes the appliances moved."""
    before = sum(_metrics_bytes(port) for port in ports)
    try:
        os.setxattr(path, SNAP, name)
        daemon.send_signal(signal.SIGSTOP)
        return sum(_metrics_bytes(port) for port in ports) - before
    finally:
        daemon.send_signal(signal.SIGCONT)


def test_mirror_snapshot_moves_no_file_data(tmp_path):
    """1 GiB mirror:2 file: the snapshot call (a clone of every member inside its
    appliance) moves none of its bytes over the transport (appliance byte counters), and
    the sets stay healthy.

    Only the call is counted: the daemon is stopped the moment it returns. The count is
    taken up to three times (each after the sets are whole again): a snapshot that moved
    the file's data would do so every time."""
    workdir = str(tmp_path)
    launcher = ApplianceLauncher(os.path.join(workdir, "appliances"))
    ports = [free_port() for _ in range(3)]
    try:
        apps = []
        for port in ports:
            apps += launcher.start(1, persist=True, capacity="2400M",
                                   extra_args=("--metrics", f"127.0.0.1:{port}"))
        cluster = write_cluster(workdir, launcher, apps)
        r = run_cli("mkfs", cluster, "--scheme", "mirror:2")
        assert r.returncode == 0, r.stderr
        c = FsCluster(workdir, launcher, apps, cluster)
        try:
            mnt = c.mount().mountpoint
            p = os.path.join(mnt, "big")
            size = 1 << 30
            block = os.urandom(1 << 20)
            with open(p, "wb") as f:
                for _ in range(size >> 20):
                    f.write(block)
                os.fsync(f.fileno())
            counts = []
            for attempt in range(3):
                name = f"big{attempt}".encode()
                counts.append(_snapshot_frozen_after(c.mounts[-1].process, p, name, ports))
                assert all(s["state"] == "healthy" for s in _status(mnt)["sets"])
                assert wait_for(lambda: all(s["state"] == "healthy"
                                            for s in _status(mnt)["sets"]), 120)
                if counts[-1] < 1 << 20:
                    break
                os.setxattr(mnt, DELETE, name)
            moved = min(counts)
            assert moved < 1 << 20, f"bytes crossed the transport: {counts}"
            view = os.path.join(mnt, ".snapshots", name.decode())
            assert os.stat(view).st_size == size
            with open(view, "rb") as f:
                for _ in range(size >> 20):
                    assert f.read(1 << 20) == block
        finally:
            c.close()
    finally:
        launcher.close()


def test_mirror_snapshot_gets_redundancy(tmp_path):
    """A split snapshot (mirror:3) starts as one region; after the call its set is rebuilt
    onto the other appliances in the background (listed health: healthy), so the snapshot
    then survives the loss of the appliance that holds the split-off region, remount
    included."""
    c = make_cluster(tmp_path, count=3, scheme="mirror:3", capacity="256M",
                     mkfs_args=("--set-size", "16M"))
    try:
        mnt = c.mount().mountpoint
        p = os.path.join(mnt, "f")
        data = os.urandom((6 << 20) + 5)
        with open(p, "wb") as f:
            f.write(data)
        os.setxattr(p, SNAP, b"r")
        [entry] = listing(mnt)
        assert entry["health"] in ("degraded", "rebuilding", "healthy"), entry
        assert wait_for(lambda: listing(mnt)[0]["health"] == "healthy", 60), listing(mnt)
        log = c.mounts[-1].log_tail(300)
        [split] = re.findall(r"created set testfs/data-1: mirror:3, \d+ bytes on .*, (\S+)$",
                             log, re.M)  # the last member is the one split off
        victim = next(a for a in c.apps if a.address == split)
        c.remount()
        c.launcher.kill(victim)  # the appliance holding the split-off region
        assert read_uncached(os.path.join(mnt, ".snapshots", "r")) == data
        assert read_uncached(p) == data
    finally:
        c.close()
        c.launcher.close()


def test_cli(cluster):
    mnt = cluster.mount().mountpoint
    d = os.path.join(mnt, "d")
    os.mkdir(d)
    with open(os.path.join(d, "a"), "wb") as f:
        f.write(b"first")
    r = run_cli("snapshot", "create", d, "c1")
    assert r.returncode == 0 and ".snapshots/c1" in r.stdout, r.stderr
    r = run_cli("snapshot", "list", os.path.join(d, "a"))
    assert r.returncode == 0 and "c1" in r.stdout and "directory" in r.stdout, r.stderr
    r = run_cli("snapshot", "list", mnt, "--json")
    assert [e["name"] for e in json.loads(r.stdout)] == ["c1"]
    r = run_cli("snapshot", "create", d, "c1")
    assert r.returncode == 1 and "File exists" in r.stderr and "Traceback" not in r.stderr
    with open(os.path.join(d, "a"), "wb") as f:
        f.write(b"second")
    os.mkdir(os.path.join(d, "later"))
    r = run_cli("snapshot", "restore", d, "c1")
    assert r.returncode == 0, r.stderr
    assert os.listdir(d) == ["a"] and read(os.path.join(d, "a")) == b"first"
    r = run_cli("snapshot", "delete", mnt, "c1")
    assert r.returncode == 0, r.stderr
    r = run_cli("snapshot", "delete", mnt, "c1")
    assert r.returncode == 1 and "No such file" in r.stderr
    r = run_cli("snapshot", "create", "/tmp", "x")
    assert r.returncode == 1 and "not on a resilfs mount" in r.stderr


def test_unflushed_writes_are_in_the_snapshot(cluster):
    """Writes still in the kernel's cache (buffered, open file; MAP_SHARED, no msync) are
    flushed by the snapshot: everything written before the call is in it."""
    mnt = cluster.mount().mountpoint
    p = os.path.join(mnt, "m")
    with open(p, "wb") as f:
        f.write(bytes(1 << 20))
    with open(p, "r+b") as f, mmap.mmap(f.fileno(), 1 << 20) as m:
        m[:5] = b"mmap!"
        f.seek(4096)
        f.write(b"buffered")
        f.flush()  # into the kernel's page cache, not to the daemon
        os.setxattr(p, SNAP, b"dirty")
        got = read(os.path.join(mnt, ".snapshots", "dirty"))
        assert got[:5] == b"mmap!" and got[4096:4104] == b"buffered"


def test_directory_snapshot_is_one_instant(cluster):
    """A writer writes version v to a/x and then to b/y (O_DIRECT, one request each), so at
    every instant x's version is y's or y's + 1. A snapshot of the tree must show that."""
    mnt = cluster.mount().mountpoint
    d = os.path.join(mnt, "pair")
    os.makedirs(os.path.join(d, "a"))
    os.makedirs(os.path.join(d, "b"))
    size = 64 << 10
    log_path = os.path.join(cluster.workdir, "pair-versions")
    writer = subprocess.Popen([sys.executable, "-c", PAIR_WRITER, os.path.join(d, "a", "x"),
                               os.path.join(d, "b", "y"), str(size), log_path])
    try:
        assert wait_for(lambda: os.path.exists(log_path) and os.path.getsize(log_path) > 100)
        for k in range(5):
            os.setxattr(d, SNAP, f"pair{k}".encode())
            view = os.path.join(mnt, ".snapshots", f"pair{k}")
            x, y = (read(os.path.join(view, *part)) for part in (("a", "x"), ("b", "y")))
            vx, vy = (int(re.match(rb"<v(\d+)>", data).group(1)) for data in (x, y))
            assert x == stamp(vx, size) and y == stamp(vy, size)
            assert vx in (vy, vy + 1), (vx, vy)
            logged = os.path.getsize(log_path)  # the next snapshot sees the writer go on
            assert wait_for(lambda n=logged: os.path.getsize(log_path) > n)
    finally:
        writer.terminate()
        writer.wait(10)


PAIR_WRITER = r"""
import mmap, os, sys, time
x, y, size, log = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
buf = mmap.mmap(-1, size)
fds = [os.open(p, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644) for p in (x, y)]
with open(log, "w", buffering=1) as out:
    v = 0
    while True:
        v += 1
        buf[:] = (b"<v%d>" % v).ljust(64, b".") * (size // 64)
        for fd in fds:
            os.pwrite(fd, buf, 0)
        out.write("%d\n" % v)
"""


def test_back_to_back_snapshots_on_one_set(tmp_path):
    """Over shm with 256 MiB mirror:3 sets: a second snapshot while the first one's rebuild
    runs waits for it and splits again (no whole-region clone); everything ends healthy."""
    c = make_cluster(tmp_path, count=3, scheme="mirror:3", capacity="1G", transport="shm")
    try:
        mnt = c.mount().mountpoint
        data = os.urandom(64 << 20)
        with open(os.path.join(mnt, "f"), "wb") as f:
            f.write(data)
        with open(os.path.join(mnt, "g"), "wb") as f:
            f.write(b"small")
        os.setxattr(os.path.join(mnt, "f"), SNAP, b"first")
        os.setxattr(os.path.join(mnt, "g"), SNAP, b"second")
        assert read_uncached(os.path.join(mnt, ".snapshots", "first")) == data
        assert read(os.path.join(mnt, ".snapshots", "second")) == b"small"
        log = c.mounts[-1].log_tail(200)
        assert log.count("(data-1: split)") == 2 and "WARNING" not in log, log
        status = json.loads(os.getxattr(mnt, "user.resilfs.status"))
        assert not status["read_only"]
        assert wait_for(lambda: all(s["state"] == "healthy" for s in json.loads(
            os.getxattr(mnt, "user.resilfs.status"))["sets"]), 120)
    finally:
        c.close()
        c.launcher.close()


def _members(mnt, set_id) -> dict:
    return next(s for s in _status(mnt)["sets"] if s["id"] == set_id)


def test_mirror2_snapshot_keeps_the_live_file_on_two_copies(tmp_path):
    """Issue 16, defect 6: a snapshot of a mirror:2 set must not leave the live file on one
    copy (a split did, until the background rebuild ended). Right after the call the live
    set is healthy on both its members, and losing either appliance at once loses nothing:
    neither the live file nor the snapshot. The set is then rebuilt with nothing else
    triggering it."""
    c = make_cluster(tmp_path, count=3, scheme="mirror:2", capacity="256M",
                     mkfs_args=("--set-size", "16M"))
    try:
        mnt = c.mount().mountpoint
        p = os.path.join(mnt, "f")
        data = os.urandom((6 << 20) + 3)
        with open(p, "wb") as f:
            f.write(data)
            os.fsync(f.fileno())
        before = _members(mnt, 1)
        os.setxattr(p, SNAP, b"s")
        after = _members(mnt, 1)
        assert (after["state"], after["members"]) == ("healthy", before["members"]), after
        victim = next(a for a in c.apps if a.address == before["members"][0])
        c.launcher.kill(victim)  # the member a split would have left alone
        assert read_uncached(p) == data
        assert read_uncached(os.path.join(mnt, ".snapshots", "s")) == data
        assert wait_for(lambda: all(s["state"] == "healthy" for s in _status(mnt)["sets"]),
                        60), _status(mnt)
    finally:
        c.close()
        c.launcher.close()


def test_mirror3_split_is_rebuilt_at_once(tmp_path):
    """A mirror:3 set is still split (two copies stay): status shows the set short of the
    member (degraded, then rebuilding) and the rebuild runs with nothing else triggering
    it, until the set and the snapshot are healthy."""
    c = make_cluster(tmp_path, count=3, scheme="mirror:3", capacity="256M",
                     mkfs_args=("--set-size", "16M"))
    try:
        mnt = c.mount().mountpoint
        p = os.path.join(mnt, "f")
        data = os.urandom(6 << 20)
        with open(p, "wb") as f:
            f.write(data)
            os.fsync(f.fileno())
        os.setxattr(p, SNAP, b"s")
        assert "(data-1: split)" in c.mounts[-1].log_tail(50)
        states = [_members(mnt, 1)["state"]]
        assert states[0] in ("degraded", "rebuilding"), states
        assert wait_for(lambda: states.append(_members(mnt, 1)["state"])
                        or states[-1] == "healthy", 60), states
        assert wait_for(lambda: listing(mnt)[0]["health"] == "healthy", 60), listing(mnt)
        assert read_uncached(p) == data
        assert read_uncached(os.path.join(mnt, ".snapshots", "s")) == data
    finally:
        c.close()
        c.launcher.close()


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return float(re.search(rf"^{name} ([0-9.e+]+)$", text, re.M).group(1))


def _regions(ports) -> list[int]:
    return [int(_metric(port, "resilfs_appliance_regions")) for port in ports]


@pytest.fixture
def slow_clones(tmp_path):
    """Three appliances that copy a clone at 64 MiB/s (``--clone-rate``, the slowest they
    may be told) and serve metrics; ec:2+1 in 512 MiB sets: each member is 256 MiB, so
    each clone takes about 4 s, four times the 1 s request timeout (and the rebuild
    worker's probes come meanwhile). Yields (cluster, ports)."""
    workdir = str(tmp_path)
    launcher = ApplianceLauncher(os.path.join(workdir, "appliances"))
    ports = [free_port() for _ in range(3)]
    try:
        apps = []
        for port in ports:
            apps += launcher.start(1, persist=True, capacity="768M", extra_args=(
                "--metrics", f"127.0.0.1:{port}", "--clone-rate", "64M"))
        cluster = write_cluster(workdir, launcher, apps)
        r = run_cli("mkfs", cluster, "--scheme", "ec:2+1", "--set-size", "512M")
        assert r.returncode == 0, r.stderr
        c = FsCluster(workdir, launcher, apps, cluster)
        try:
            yield c, ports
        finally:
            c.close()
    finally:
        launcher.close()


def test_a_slow_clone_fails_no_member_and_leaks_nothing(slow_clones):
    """Issue 16, defect 6: a clone that takes longer than the request timeout is waited
    for (the wait scales with the region's size): the snapshot is taken, no member is
    marked failed, and deleting it leaves the appliances with the regions they had."""
    c, ports = slow_clones
    mnt = c.mount().mountpoint
    p = os.path.join(mnt, "f")
    data = os.urandom((1 << 20) + 5)
    with open(p, "wb") as f:
        f.write(data)
        os.fsync(f.fileno())
    before = _regions(ports)
    os.setxattr(p, SNAP, b"slow")
    log = c.mounts[-1].log_tail(100)
    assert "cloned in their appliances" in log, log
    assert not re.search(r"member \d+ on \S+ failed", log), log
    assert all(s["state"] == "healthy" and not s["failed"] for s in _status(mnt)["sets"])
    assert _regions(ports) == [n + 1 for n in before]  # one clone each
    assert read_uncached(os.path.join(mnt, ".snapshots", "slow")) == data
    os.setxattr(mnt, DELETE, b"slow")
    assert _regions(ports) == before


def test_a_failed_clone_frees_its_region(slow_clones):
    """The daemon dies (SIGKILL) while the appliances clone for a snapshot: each appliance
    frees the clone it was making, whose reply nobody can receive, so nothing leaks."""
    c, ports = slow_clones
    mounted = c.mount()
    p = os.path.join(mounted.mountpoint, "f")
    with open(p, "wb") as f:
        f.write(os.urandom(1 << 20))
        os.fsync(f.fileno())
    before = _regions(ports)
    errors = []

    def snapshot():
        try:
            os.setxattr(p, SNAP, b"dies")
        except OSError as exc:  # the daemon is gone: ENOTCONN
            errors.append(exc.errno)

    caller = threading.Thread(target=snapshot)
    caller.start()
    try:
        assert wait_for(lambda: _regions(ports) != before, 30), "no clone started"
        mounted.kill()  # SIGKILL, then the dead mount cleared
    finally:
        caller.join(30)
    assert len(errors) == 1 and errors[0] in (errno.ENOTCONN, errno.ECONNABORTED), errors
    assert wait_for(lambda: _regions(ports) == before, 30), (_regions(ports), before)
