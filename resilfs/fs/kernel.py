"""What resilfs tells the kernel about a mount: FUSE options and block-device tuning.

Shared by the resilfs mount and by ``scripts/baseline_ramfs.py`` so that the benchmark's
ceiling runs with exactly the options resilfs uses.
"""
import logging
import os
import re

import pyfuse3

log = logging.getLogger(__name__)

#: read-ahead that makes every buffered read a 1 MiB FUSE request (at the kernel's default,
#: 128, buffered reads arrive as 256 KiB requests and mmap reads mostly as 4 KiB ones; 1024
#: made mmap reads ~16x faster on the development VM)
READ_AHEAD_KB = 1024


def fuse_options(fsname: str, extra=()) -> set[str]:
    """The mount options: the kernel checks permissions (``default_permissions``).

    ``extra`` adds user options such as ``allow_other``. libfuse refuses ``max_write``,
    ``big_writes`` and ``writeback_cache`` as options: the writeback cache is switched on by
    ``Operations.enable_writeback_cache`` instead.
    """
    options = set(pyfuse3.default_options)
    options.add(f"fsname={fsname}")
    options.add("subtype=resilfs")
    options.update(extra)
    return options


def tune_when_ready(mountpoint: str, kilobytes: int = READ_AHEAD_KB) -> bool:
    """Wait until the mount answers, then raise its read-ahead; return whether that worked.

    Blocking: run it in a thread while the FUSE main loop runs. The kernel sets the bdi's
    read-ahead from the daemon's answer to FUSE_INIT, so a value written before that answer
    is overwritten; a stat() of the mount point returns only after it.
    """
    os.stat(mountpoint)
    return raise_read_ahead(mountpoint, kilobytes)


def raise_read_ahead(mountpoint: str, kilobytes: int = READ_AHEAD_KB) -> bool:
    """Set ``read_ahead_kb`` on the mount's bdi; return whether it worked.

    Call after FUSE_INIT was answered (see ``tune_when_ready``). The device is found in
    /proc/self/mountinfo. Failure (not mounted, no permission, no sysfs) only costs read
    speed: it is logged and False is returned.
    """
    device = mount_device(mountpoint)
    if device is None:
        log.warning("could not raise read-ahead: %s is not in /proc/self/mountinfo", mountpoint)
        return False
    path = f"/sys/class/bdi/{device}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(str(kilobytes))
    except OSError as exc:
        log.warning("could not raise read-ahead of %s (%s): %s", mountpoint, path, exc)
        return False
    return True


def mount_device(mountpoint: str) -> str | None:
    """The ``MAJOR:MINOR`` of the last mount on ``mountpoint``, or None if there is none."""
    target = os.path.abspath(mountpoint)  # no realpath: lstat would enter the mount
    device = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if _unescape(fields[4]) == target:
                device = fields[2]
    return device


def _unescape(path: str) -> str:
    """Undo mountinfo's octal escapes (space, tab, newline, backslash)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)
