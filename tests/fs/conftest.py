"""Fixtures for real mounts: appliances started with the launcher, mkfs, a mount daemon.

Every fixture cleans up whatever happened: the mount is unmounted (lazily if need be), the
daemon stopped by PID, the appliances stopped by the launcher, the temp dir removed.
"""
import itertools
import os
import re
import tempfile

import pytest

from resilfs.appliance.launcher import ApplianceLauncher
from tests.fs.mounting import Mounted, run_cli, write_cluster


class FsCluster:
    """Appliances + a formatted filesystem; ``mount()`` starts a daemon on ``mountpoint``."""

    def __init__(self, workdir: str, launcher: ApplianceLauncher, apps, cluster: str):
        self.workdir, self.launcher, self.apps, self.cluster = workdir, launcher, apps, cluster
        # outside pytest's 0700 temp dirs, so that other users can reach it
        self.mountpoint = tempfile.mkdtemp(prefix="resilfs-mnt-")
        os.chmod(self.mountpoint, 0o755)
        self.mounts: list[Mounted] = []

    def mount(self, *extra: str) -> Mounted:
        m = Mounted(self.cluster, self.mountpoint, os.path.join(self.workdir, "mount.log"),
                    *extra)
        self.mounts.append(m)
        return m.start()

    def remount(self, *extra: str) -> Mounted:
        """Clean unmount of the current mount, then a new one."""
        assert self.mounts[-1].unmount() == 0, self.mounts[-1].log_tail()
        return self.mount(*extra)

    def close(self) -> None:
        for m in self.mounts:
            m.stop()
        if not os.path.ismount(self.mountpoint):
            os.rmdir(self.mountpoint)


def make_cluster(tmp_path, count=3, scheme="mirror:2", transport="tcp", capacity="512M",
                 mkfs_args=()):
    workdir = str(tmp_path)
    launcher = ApplianceLauncher(os.path.join(workdir, "appliances"))
    try:
        apps = launcher.start(count, persist=True, capacity=capacity)
        cluster = write_cluster(workdir, launcher, apps, transport=transport)
        r = run_cli("mkfs", cluster, "--scheme", scheme, *mkfs_args)
        assert r.returncode == 0, r.stderr
    except BaseException:
        launcher.close()
        raise
    return FsCluster(workdir, launcher, apps, cluster)


def lose_one_set(tmp_path):
    """Six appliances, mirror:2 in 1 MiB sets, one fsync'd 1 MiB file per set (``f0`` on set
    1, ...), then every appliance of one set killed while another set and two copies of the
    journal survive. Returns (cluster, mount, contents by name, lost file, kept file); skips
    if placement left no such pair. The caller closes the cluster and its launcher."""
    c = make_cluster(tmp_path, count=6, scheme="mirror:2", capacity="64M",
                     mkfs_args=("--set-size", "1M"))
    try:
        m = c.mount()
        contents = {}
        for i in range(6):
            contents[f"f{i}"] = os.urandom(1 << 20)
            with open(os.path.join(c.mountpoint, f"f{i}"), "wb") as f:
                f.write(contents[f"f{i}"])
                os.fsync(f.fileno())
        placement = {int(s): set(members.split(", ")) for s, members in re.findall(
            r"created set testfs/data-(\d+): mirror:2, \d+ bytes on (.*)", m.log_tail(200))}
        journal_copies = {a.address for a in c.apps[:3]}
        for lost, kept in itertools.permutations(sorted(placement), 2):
            dead = placement[lost]
            if not dead & placement[kept] and len(journal_copies - dead) >= 2:
                break
        else:
            pytest.skip(f"no placement fits this test: {placement}")
        for app in c.apps:
            if app.address in dead:
                c.launcher.kill(app)
    except BaseException:
        c.close()
        c.launcher.close()
        raise
    return c, m, contents, f"f{lost - 1}", f"f{kept - 1}"


@pytest.fixture
def fs_cluster(tmp_path):
    c = make_cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()
        c.launcher.close()


@pytest.fixture
def mnt(fs_cluster):
    """The mount point of a mounted mirror:2 filesystem over tcp."""
    fs_cluster.mount("-o", "allow_other")
    return fs_cluster.mountpoint
