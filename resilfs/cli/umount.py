"""Unmount a resilfs mount (waits until the daemon has stored its metadata)."""
import argparse
import os
import subprocess
import sys
import time

from ..fs.kernel import mount_device

UMOUNT_TIMEOUT = 60.0


def main(args=None) -> int:
    p = argparse.ArgumentParser(prog="resilfs umount", description=__doc__)
    p.add_argument("mountpoint")
    p.add_argument("--lazy", action="store_true", help="detach now even if busy (-z)")
    opts = p.parse_args(args)
    mountpoint = os.path.abspath(opts.mountpoint)
    if mount_device(mountpoint) is None:
        print(f"resilfs umount: {mountpoint} is not mounted", file=sys.stderr)
        return 1
    r = subprocess.run(["fusermount3", "-u", *(["-z"] if opts.lazy else []), mountpoint],
                       capture_output=True, text=True)
    if r.returncode:
        print(f"resilfs umount: {r.stderr.strip() or 'fusermount3 failed'}", file=sys.stderr)
        return 1
    deadline = time.monotonic() + UMOUNT_TIMEOUT
    while _daemon_running(mountpoint) and time.monotonic() < deadline:
        time.sleep(0.05)
    return 0


def _daemon_running(mountpoint: str) -> bool:
    """Whether a ``resilfs mount`` process for ``mountpoint`` is still running."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"mount" in argv and any(os.path.abspath(a.decode(errors="replace")) == mountpoint
                                    for a in argv if a):
            return True
    return False
