"""A ``resilfs mount`` daemon as a child process, for tests and benchmarks (scripts/).

``Mounted`` runs ``resilfs mount --foreground`` as a child process and waits for the mount
by polling ``os.path.ismount`` while checking that the daemon is alive (every wait has a
timeout). ``stop()`` always unmounts (``fusermount3 -u``, then ``-u -z``), then stops the
daemon by PID (SIGTERM, then SIGKILL), whatever state it is in.
"""
import os
import signal
import subprocess
import sys
import time

from resilfs.fs import cluster as clusterfile

MOUNT_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


class MountError(Exception):
    """The daemon exited, or the mount did not appear within MOUNT_TIMEOUT (it was stopped)."""


def write_cluster(workdir: str, launcher, apps, transport: str = "tcp",
                  name: str = "testfs") -> str:
    """Write ``workdir/cluster.toml`` naming ``apps`` of ``launcher`` (an
    ``ApplianceLauncher``) and its secret file; return its path."""
    path = os.path.join(workdir, "cluster.toml")
    clusterfile.write(path, name, transport, os.path.relpath(launcher.secret_file, workdir),
                      [a.address for a in apps])
    return path


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run ``python -m resilfs ARGS`` and capture its output (TimeoutExpired after
    ``timeout`` seconds)."""
    return subprocess.run([sys.executable, "-m", "resilfs", *args], capture_output=True,
                          text=True, timeout=timeout)


class Mounted:
    """A running mount daemon on ``mountpoint``."""

    def __init__(self, cluster: str, mountpoint: str, log_path: str, *extra: str):
        self.cluster, self.mountpoint, self.log_path = cluster, mountpoint, log_path
        self.extra = extra
        self.process: subprocess.Popen | None = None

    def start(self) -> "Mounted":
        os.makedirs(self.mountpoint, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "resilfs", "mount", "--foreground", self.cluster,
                 self.mountpoint, *self.extra], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not os.path.ismount(self.mountpoint):
            if self.process.poll() is not None:
                raise MountError(f"mount daemon exited with {self.process.returncode}:\n"
                                 + self.log_tail())
            if time.monotonic() > deadline:
                self.stop()
                raise MountError("mount did not appear in time:\n" + self.log_tail())
            time.sleep(0.02)
        return self

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def unmount(self) -> int | None:
        """Clean unmount: ``fusermount3 -u`` and wait for the daemon to exit by itself."""
        subprocess.run(["fusermount3", "-u", self.mountpoint], capture_output=True,
                       timeout=STOP_TIMEOUT)
        return self._wait(STOP_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL the daemon (a crash), then clear the dead mount."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self._wait(STOP_TIMEOUT)
        subprocess.run(["fusermount3", "-u", "-z", self.mountpoint], capture_output=True,
                       timeout=STOP_TIMEOUT)

    def _wait(self, timeout: float) -> int | None:
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """Unmount and stop the daemon, whatever its state (for finally blocks)."""
        if os.path.ismount(self.mountpoint):
            subprocess.run(["fusermount3", "-u", self.mountpoint], capture_output=True,
                           timeout=STOP_TIMEOUT)
        if self.process is not None and self._wait(STOP_TIMEOUT) is None:
            self.process.terminate()
            if self._wait(5) is None:
                self.process.kill()
                self._wait(5)
        if os.path.ismount(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", self.mountpoint], capture_output=True,
                           timeout=STOP_TIMEOUT)
