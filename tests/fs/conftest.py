"""Fixtures for real mounts: appliances started with the launcher, mkfs, a mount daemon.

Every fixture cleans up whatever happened: the mount is unmounted (lazily if need be), the
daemon stopped by PID, the appliances stopped by the launcher, the temp dir removed.

Every test here ends with scrub and fsck (``scrub_and_fsck``, autouse, as S3QL's tests end
with fsck): when a test closes an ``FsCluster``, before anything is stopped, the mount that
is still up is scrubbed and checked online, then unmounted cleanly and checked offline;
whatever they find fails the test.
"""
import itertools
import json
import os
import re
import tempfile
import threading
import time

import pytest
import trio

from resilfs.appliance.launcher import ApplianceLauncher
from resilfs.cli.fsck import check_offline, check_online
from resilfs.fs import cluster as clusterfile
from tests.fs.mounting import Mounted, run_cli, write_cluster

CHECK_TIMEOUT = 120.0  # seconds for the scrub and both checks of one cluster


class FsCluster:
    """Appliances + a formatted filesystem; ``mount()`` starts a daemon on ``mountpoint``."""

    #: set by ``scrub_and_fsck`` while a test runs: ``close()`` calls it first, while the
    #: mount and the appliances still run
    final_check = None

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
        if FsCluster.final_check is not None:
            FsCluster.final_check(self)
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


# -- every test ends with scrub and fsck ----------------------------------------------------
def _scrub(mountpoint: str) -> dict:
    os.setxattr(mountpoint, "user.resilfs.scrub", b"check")
    deadline = time.monotonic() + CHECK_TIMEOUT
    while True:
        scrub = json.loads(os.getxattr(mountpoint, "user.resilfs.status"))["scrub"]
        if scrub["finished"] or time.monotonic() > deadline:
            return scrub
        time.sleep(0.05)


def _findings(c: FsCluster) -> list[str]:
    """Scrub and fsck the cluster's last mount; what they found, as lines.

    Appliances that a test stopped make the checks partial: then only mismatches and
    problems count (not what could not be reached).
    """
    if not c.mounts:
        return []
    m = c.mounts[-1]
    all_up = all(app.running for app in c.apps)
    found = []
    if m.process.poll() is None and os.path.ismount(c.mountpoint):
        scrub = _scrub(c.mountpoint)
        if not scrub["finished"]:
            found.append(f"scrub did not finish in {CHECK_TIMEOUT} s: {scrub}")
        if scrub["mismatched"]:
            found.append(f"scrub: {scrub['mismatched']} stripes mismatched")
        if all_up and (scrub["errors"] or scrub["unchecked"]):
            found.append(f"scrub: {scrub['unchecked']} stripes unchecked, errors "
                         f"{scrub['errors']}")
        report = check_online(c.mountpoint)
        found += [f"fsck --online: {p}" for p in report.problems]
        if all_up:
            found += [f"fsck --online: not checked: {u}" for u in report.unchecked]
        if m.unmount() != 0:
            found.append("the mount did not unmount cleanly:\n" + m.log_tail())
    if all_up and m.process.poll() == 0:
        report = trio.run(check_offline, clusterfile.load(c.cluster))
        found += [f"fsck: {p}" for p in report.problems]
        found += [f"fsck: not checked: {u}" for u in report.unchecked]
    return found


@pytest.fixture(autouse=True)
def scrub_and_fsck():
    """Fail the test if scrub or fsck (online, then offline) finds anything when it closes
    its clusters. The checks run in a thread of their own (a trio loop of their own, and a
    deadline even if the mount hangs)."""
    found: list[str] = []

    def check(c: FsCluster) -> None:
        result: list = []
        def run():
            try:
                result.append(_findings(c))
            except Exception as exc:  # noqa: BLE001 (reported as a finding)
                result.append([f"scrub or fsck failed: {exc!r}"])

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(CHECK_TIMEOUT + 60)
        found.extend(result[0] if result else
                     [f"scrub and fsck did not finish in {CHECK_TIMEOUT + 60} s"])

    FsCluster.final_check = staticmethod(check)
    try:
        yield
    finally:
        FsCluster.final_check = None
    if found:
        pytest.fail("scrub and fsck after the test found:\n" + "\n".join(found),
                    pytrace=False)
