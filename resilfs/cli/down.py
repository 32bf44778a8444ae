"""Unmount what resilfs up mounted and stop the appliances it started."""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

from ..fs import embedded

STOP_TIMEOUT = 10.0


def main(args=None) -> int:
    p = argparse.ArgumentParser(prog="resilfs down", description=__doc__)
    p.add_argument("mountpoint")
    p.add_argument("--keep", action="store_true", help="keep the appliances' data in /dev/shm")
    opts = p.parse_args(args)
    mountpoint = os.path.abspath(opts.mountpoint)
    info = embedded.load(mountpoint)
    if info is None:
        print(f"resilfs down: nothing was started by 'resilfs up {mountpoint}'", file=sys.stderr)
        return 1
    subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True)
    if not _wait_gone(info["mount_pid"], 60.0):  # it stores its metadata before exiting
        subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True)
        _stop(info["mount_pid"])
    for app in info["appliances"]:
        _stop(app["pid"])
    if not opts.keep:
        shutil.rmtree(embedded.state_dir(mountpoint), ignore_errors=True)
    print(f"unmounted {mountpoint}; stopped {len(info['appliances'])} appliances")
    return 0


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while embedded.alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _stop(pid: int) -> None:
    """SIGTERM, then SIGKILL if it is still there after STOP_TIMEOUT seconds."""
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 5.0)):
        if not embedded.alive(pid):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if _wait_gone(pid, wait):
            return
