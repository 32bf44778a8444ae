"""Running resilfs like any filesystem: ``mount -t fuse.resilfs``, a private fstab with
``mount -a -T``, ``umount``; ``resilfs up -o``.

mount(8) runs mount.fuse3, which runs ``resilfs SOURCE MOUNTPOINT -o OPTIONS`` through
``/bin/sh`` with no PATH of its own, so ``resilfs`` must be in the shell's default PATH
(/usr/local/bin, ...). The test does not install anything on the machine: it runs in a
private mount namespace (``unshare -m``) where a temp dir holding a ``resilfs`` link to
this venv's command is bind-mounted over /usr/local/bin; the FUSE mount lives in that
namespace too, and the steps that look at it run there (``_inside``). The namespace first
detaches its copies of the host's other FUSE mounts, which would otherwise keep them alive
after the host unmounts them. Every process the test starts is stopped by PID, whatever
happens.
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from resilfs.fs import embedded
from tests.fs.conftest import make_cluster
from tests.fs.mounting import run_cli
from tests.fs.test_metrics import free_port, scrape, value

pytestmark = pytest.mark.timeout(180)

DEADLINE = 60.0


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + DEADLINE
    while embedded.alive(pid):
        assert time.monotonic() < deadline, f"daemon {pid} still running after unmount"
        time.sleep(0.05)


def _mount(*args: str) -> int:
    """Run mount(8); return the daemon's PID from its "mounted on ... (pid N" line."""
    r = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=DEADLINE)
    assert r.returncode == 0, f"mount {args}: {r.returncode} {r.stdout} {r.stderr}"
    found = re.search(r"\(pid (\d+)", r.stdout)
    assert found, r.stdout
    print(f"daemon {found.group(1)}", flush=True)  # the outer test stops it if need be
    return int(found.group(1))


def _umount(mountpoint: str, pid: int) -> None:
    r = subprocess.run(["umount", mountpoint], capture_output=True, text=True,
                       timeout=DEADLINE)
    assert r.returncode == 0, r.stderr
    assert not os.path.ismount(mountpoint)
    _wait_gone(pid)  # it stores what it cached after the kernel let go


def _super_options(mountpoint: str) -> set[str]:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == mountpoint:
                sep = fields.index("-")
                assert fields[sep + 1] == "fuse.resilfs", line
                return set(fields[5].split(",")) | set(fields[sep + 3].split(","))
    raise AssertionError(f"{mountpoint} not in mountinfo")


def _drop_copied_fuse_mounts() -> None:
    """Detach, in this private namespace, the copies of the host's FUSE mounts that
    ``unshare`` made: a copy keeps its filesystem alive after the host unmounts it, so
    that mount's daemon would not end until this namespace does."""
    with open("/proc/self/mountinfo") as f:
        lines = f.read().splitlines()
    for line in lines:
        fields = line.split()
        if fields[fields.index("-") + 1].startswith("fuse"):
            path = fields[4].encode().decode("unicode_escape")  # \040 is a space
            # a mount below one detached before is gone with it: no check
            subprocess.run(["umount", "-l", path], capture_output=True, timeout=DEADLINE)


def _inside(cluster: str, mountpoint: str, fstab: str, log: str, host_mount: str) -> None:
    """The steps in the private namespace (``resilfs`` on the default PATH there);
    ``host_mount`` is a FUSE mount of the host, which must not stay copied in here."""
    _drop_copied_fuse_mounts()
    with open("/proc/self/mountinfo") as f:
        assert f" {host_mount} " not in f.read()
    pid = _mount("-t", "fuse.resilfs", cluster, mountpoint,
                 "-o", f"_netdev,allow_other,noatime,nofail,log={log}")
    assert os.path.ismount(mountpoint)
    options = _super_options(mountpoint)
    assert {"allow_other", "noatime"} <= options, options
    data = os.urandom(1 << 20)
    with open(os.path.join(mountpoint, "f"), "wb") as f:
        f.write(data)  # no fsync: the unmount must store it
    _umount(mountpoint, pid)

    with open(fstab, "w") as f:
        f.write(f"{cluster} {mountpoint} fuse.resilfs _netdev,allow_other,log={log} 0 0\n")
    pid = _mount("-a", "-T", fstab)
    assert "allow_other" in _super_options(mountpoint)
    with open(os.path.join(mountpoint, "f"), "rb") as f:
        assert f.read() == data
    _umount(mountpoint, pid)

    pid = _mount("-T", fstab, mountpoint)  # by its mount point, as `mount /mnt/home`
    assert os.path.isfile(os.path.join(mountpoint, "f"))
    _umount(mountpoint, pid)


def test_mount_t_fuse_resilfs_and_private_fstab(fs_cluster, tmp_path):
    other = make_cluster(tmp_path / "other")  # a mount of the host the namespace must drop
    try:
        host_mount = other.mount().mountpoint
        _mount_in_a_private_namespace(fs_cluster, tmp_path, host_mount)
        assert other.mounts[-1].unmount() == 0, other.mounts[-1].log_tail()
    finally:
        other.close()
        other.launcher.close()


def _mount_in_a_private_namespace(fs_cluster, tmp_path, host_mount: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(os.path.join(os.path.dirname(sys.executable), "resilfs"), bin_dir / "resilfs")
    inner = (f"import sys; sys.path.insert(0, {os.getcwd()!r}); "
             f"from tests.fs.test_fstab import _inside; "
             f"_inside({fs_cluster.cluster!r}, {fs_cluster.mountpoint!r}, "
             f"{str(tmp_path / 'fstab')!r}, {str(tmp_path / 'daemon.log')!r}, "
             f"{host_mount!r})")
    process = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"mount --bind {bin_dir} /usr/local/bin && exec {sys.executable} -c \"$0\"", inner],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=150)
    finally:
        if process.poll() is None:
            process.kill()
            out, err = process.communicate()
        for pid in re.findall(r"daemon (\d+)", out or ""):  # left running by a failure
            if embedded.alive(int(pid)):
                os.kill(int(pid), signal.SIGKILL)
    log = (tmp_path / "daemon.log").read_text() if (tmp_path / "daemon.log").exists() else ""
    assert process.returncode == 0, f"{out}\n{err}\n--- daemon log ---\n{log[-3000:]}"
    assert out.count("daemon ") == 3


def test_fstab_form_refuses_bad_options_with_one_line(fs_cluster):
    r = subprocess.run([sys.executable, "-m", "resilfs", fs_cluster.cluster,
                        fs_cluster.mountpoint, "-o", "rw,allow_other,dev,suid,bogus=1,hard"],
                       capture_output=True, text=True, timeout=DEADLINE)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [r.stderr.strip()], r.stderr
    assert "unsupported mount option(s): bogus=1, hard" in r.stderr
    assert not os.path.ismount(fs_cluster.mountpoint)


def test_mount_reports_the_daemons_error(tmp_path, fs_cluster):
    """A daemon that fails after the checks (here: no filesystem on the appliances) is
    reported by the one line it printed, not only by "see the log"."""
    other = tmp_path / "other.toml"
    text = open(fs_cluster.cluster).read().replace('name = "testfs"', 'name = "nothing"')
    other.write_text(text)
    r = run_cli("mount", str(other), fs_cluster.mountpoint, "--log", str(tmp_path / "m.log"))
    assert r.returncode == 1
    assert "no filesystem named 'nothing'" in r.stderr, r.stderr
    assert not os.path.ismount(fs_cluster.mountpoint)


def _can_list_as_nobody(path: str) -> bool:
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        "ls", path], capture_output=True, timeout=DEADLINE)
    return r.returncode == 0


def _mount_point() -> str:
    """Outside pytest's 0700 temp dirs, so that another user can reach it."""
    mnt = tempfile.mkdtemp(prefix="resilfs-up-")
    os.chmod(mnt, 0o755)
    return mnt


def test_up_takes_fuse_options():
    mnt = _mount_point()
    try:
        port = free_port()
        r = run_cli("up", mnt, "--capacity", "128M", "-o", "allow_other,noatime",
                    "--metrics", f"127.0.0.1:{port}")
        assert r.returncode == 0, r.stderr
        assert {"allow_other", "noatime"} <= _super_options(mnt)
        assert _can_list_as_nobody(mnt)  # allow_other: not only root uses the mount
        assert value(scrape(port), "resilfs_mount_fuse_requests_total", op="getattr") > 0
        r = run_cli("down", mnt)
        assert r.returncode == 0, r.stderr
    finally:
        _clean_up(mnt)


def test_up_without_allow_other_keeps_others_out():
    mnt = _mount_point()
    try:
        r = run_cli("up", mnt, "--capacity", "128M")
        assert r.returncode == 0, r.stderr
        assert "allow_other" not in _super_options(mnt)
        assert not _can_list_as_nobody(mnt)
    finally:
        _clean_up(mnt)


@pytest.mark.parametrize("args, message", [
    (["-o", "allow_other,bogus"], "unsupported mount option(s): bogus"),
    (["-o", "cache_size=lots"], "cache_size"),
    (["--metrics", "nowhere"], "metrics address must be HOST:PORT"),
])
def test_up_refuses_bad_options_and_starts_nothing(args, message):
    mnt = _mount_point()
    try:
        r = run_cli("up", mnt, *args)
        assert r.returncode == 1 and message in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not os.path.ismount(mnt)
        assert not os.path.exists(embedded.state_dir(mnt))
    finally:
        _clean_up(mnt)


def _clean_up(mnt: str) -> None:
    """Whatever ``up`` left: the mount, its processes (by PID), its state dir."""
    info = embedded.load(mnt)
    subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
    if info:
        for pid in [info["mount_pid"]] + [a["pid"] for a in info["appliances"]]:
            if embedded.alive(pid):
                os.kill(pid, signal.SIGKILL)
    subprocess.run(["rm", "-rf", embedded.state_dir(mnt)])
    if not os.path.ismount(mnt):
        os.rmdir(mnt)


def test_sigterm_after_umount_still_stores_cached_writes(fs_cluster):
    """systemd stops a mount unit with umount, then SIGTERM to what is left in its cgroup:
    the daemon, still storing what it cached. It must finish that first (SIGKILL is the
    way to stop it at once)."""
    m = fs_cluster.mount("--cache-size", "512M")
    path = os.path.join(fs_cluster.mountpoint, "f")
    size = 64 << 20
    expected = bytearray(size)
    with open(path, "wb") as f:
        f.truncate(size)
        for offset in range(0, size, 16 << 10):  # 4 KiB pieces: each a dirty cache block
            piece = os.urandom(4096)
            f.seek(offset)
            f.write(piece)
            expected[offset:offset + 4096] = piece
    # no fsync: the kernel writes the pages back during umount, the daemon caches them
    r = subprocess.run(["umount", fs_cluster.mountpoint], capture_output=True, text=True,
                       timeout=DEADLINE)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + DEADLINE
    while m.process.poll() is None:  # SIGTERMs until it exits: some land while it stores
        assert time.monotonic() < deadline, m.log_tail()
        m.process.send_signal(signal.SIGTERM)
        time.sleep(0.005)
    # a SIGTERM after the daemon stored everything may still end the process
    assert m.process.returncode in (0, -signal.SIGTERM), m.log_tail()
    assert "unmounted testfs from" in m.log_tail(5), m.log_tail()
    fs_cluster.mount()
    with open(path, "rb") as f:
        assert f.read() == expected
