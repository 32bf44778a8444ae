"""Fixtures for real mounts: appliances started with the launcher, mkfs, a mount daemon.

Every fixture cleans up whatever happened: the mount is unmounted (lazily if need be), the
daemon stopped by PID, the appliances stopped by the launcher, the temp dir removed.
"""
import os
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
