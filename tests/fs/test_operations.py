"""The procedures of docs/operations.md, run as written there: replace a dead appliance for
good, add capacity, rotate the cluster secret. Real appliances, real mounts; every wait
polls a condition with a deadline."""
import errno
import json
import os
import signal
import tempfile
import time

import pytest

from resilfs.auth import write_secret
from resilfs.fs import cluster as clusterfile
from tests.fs.conftest import make_cluster
from tests.fs.mounting import run_cli

pytestmark = pytest.mark.timeout(300)

DEADLINE = 120.0


def _status(mountpoint: str) -> dict:
    r = run_cli("status", "--json", mountpoint)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _write_cluster_file(c, addresses) -> None:
    clusterfile.write(c.cluster, "testfs", "tcp",
                      os.path.relpath(c.launcher.secret_file, c.workdir), addresses)


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_replace_a_dead_appliance_for_good(tmp_path):
    c = make_cluster(tmp_path, count=4, scheme="mirror:2", capacity="256M",
                     mkfs_args=("--set-size", "4M"))
    try:
        m = c.mount()
        data = os.urandom(6 << 20)  # two sets
        path = os.path.join(c.mountpoint, "f")
        _write(path, data)
        members = {a for s in _status(c.mountpoint)["sets"] for a in s["members"]}
        # a data set member that also holds the metadata journal (the first three)
        victim = next(a for a in c.apps[:3] if a.address in members)
        assert m.unmount() == 0, m.log_tail()
        c.launcher.kill(victim)  # dead for good
        new = c.launcher.start(1, persist=True, capacity="256M")[0]
        _write_cluster_file(c, [new.address if a is victim else a.address for a in c.apps])
        m = c.mount()
        deadline = time.monotonic() + DEADLINE
        while True:
            sets = _status(c.mountpoint)["sets"]
            if (all(s["state"] == "healthy" for s in sets)
                    and not any(victim.address in s["members"] for s in sets)):
                break
            assert time.monotonic() < deadline, sets
            time.sleep(0.2)
        assert _read(path) == data
        assert m.unmount() == 0, m.log_tail()  # its checkpoint reaches the new appliance
        # the new appliance holds a copy of the metadata: lose another original journal copy
        c.launcher.kill(next(a for a in c.apps[:3] if a is not victim))
        c.mount()
        assert _read(path) == data
    finally:
        c.close()
        c.launcher.close()


def test_add_capacity(tmp_path):
    c = make_cluster(tmp_path, count=2, scheme="mirror:2", capacity="8M",
                     mkfs_args=("--set-size", "2M"))
    try:
        c.mount()
        path = os.path.join(c.mountpoint, "f")
        written = bytearray()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT)
        try:
            with pytest.raises(OSError) as full:
                for _ in range(16):  # 16 MiB: twice what two 8M appliances hold mirrored
                    piece = os.urandom(1 << 20)
                    os.write(fd, piece)
                    os.fsync(fd)
                    written += piece
            assert full.value.errno == errno.ENOSPC, full.value
        finally:
            os.close(fd)
        assert len(written) < 16 << 20
        assert c.mounts[-1].unmount() == 0, c.mounts[-1].log_tail()
        more = c.launcher.start(2, persist=True, capacity="8M")
        _write_cluster_file(c, [a.address for a in c.apps + more])
        c.mount()
        with open(path, "r+b") as f:
            f.truncate(len(written))
            f.seek(len(written))
            rest = os.urandom((12 << 20) - len(written))
            f.write(rest)
            f.flush()
            os.fsync(f.fileno())
        assert _read(path) == bytes(written) + rest
        assert len(_status(c.mountpoint)["appliances"]) == 4
    finally:
        c.close()
        c.launcher.close()


def test_rotate_the_cluster_secret(fs_cluster, tmp_path):
    c = fs_cluster
    m = c.mount()
    data = os.urandom(3 << 20)
    path = os.path.join(c.mountpoint, "f")
    _write(path, data)
    assert m.unmount() == 0, m.log_tail()
    with open(c.launcher.secret_file, "rb") as f:
        old = f.read()
    old_secret = str(tmp_path / "old-secret")
    with open(os.open(old_secret, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
        f.write(old)
    os.unlink(c.launcher.secret_file)
    write_secret(c.launcher.secret_file)  # the new secret, where every host reads it
    for app in c.apps:
        c.launcher.restart(app)  # persist dir: regions and records survive
    c.mount()
    assert _read(path) == data
    # a host that still has the old secret is refused
    stale = str(tmp_path / "stale.toml")
    clusterfile.write(stale, "testfs", "tcp", old_secret, [a.address for a in c.apps])
    other = tempfile.mkdtemp(prefix="resilfs-stale-")
    try:
        r = run_cli("mount", stale, other, "--log", str(tmp_path / "stale.log"))
        assert r.returncode == 1, r.stdout
        assert not os.path.ismount(other)
        assert "wrong cluster secret" in (tmp_path / "stale.log").read_text()
    finally:
        if not os.path.ismount(other):
            os.rmdir(other)


def test_sigusr1_logs_what_every_task_waits_at(fs_cluster):
    """``kill -USR1`` makes the daemon log its tasks and where each waits (the FUSE
    workers among them), and the mount goes on serving."""
    m = fs_cluster.mount()
    path = os.path.join(fs_cluster.mountpoint, "f")
    _write(path, b"before")
    m.process.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + DEADLINE
    while "tasks at SIGUSR1" not in m.log_tail(1000):
        assert m.process.poll() is None and time.monotonic() < deadline, m.log_tail()
        time.sleep(0.05)
    dump = m.log_tail(1000).split("tasks at SIGUSR1", 1)[1]
    assert "task pyfuse-" in dump and "resilfs/fs/mount.py" in dump, dump
    _write(path, b"after")
    assert _read(path) == b"after"
