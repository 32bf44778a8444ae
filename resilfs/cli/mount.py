"""Mount a filesystem of a cluster file on a directory.

Also the program mount.fuse3 runs for an /etc/fstab line of type ``fuse.resilfs``:
``resilfs CLUSTER MOUNTPOINT -o OPTIONS`` is ``resilfs mount CLUSTER MOUNTPOINT -o OPTIONS``
(``resilfs.cli.main``). Without ``--foreground`` it returns once the mount is ready (or
failed, with the daemon's one-line error), as mount(8) expects of a helper.
"""
import argparse
import logging
import os
import subprocess
import sys
import time

import trio

from ..errors import ResilfsError
from ..fs import cluster as clusterfile
from ..fs.mount import mount
from ..fs.writebehind import DEFAULT_LIMIT
from ..protocol import split_address
from ..sets import WRITE_MODES
from . import options as mount_options
from .mkfs import size

MOUNT_TIMEOUT = 30.0
#: the line a failing daemon prints on stderr starts with this (the parent repeats it)
ERROR_PREFIX = "resilfs mount: "


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="resilfs mount", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cluster", help="cluster file (TOML: name, transport, secret_file, appliances)")
    p.add_argument("mountpoint")
    p.add_argument("--foreground", action="store_true", help="serve in this process")
    p.add_argument("--write-mode", choices=WRITE_MODES,
                   help="how a set writes its members (default parallel)")
    p.add_argument("--cache-size", type=cache_size,
                   help="memory for the write-behind cache of small writes (e.g. 64M; 0: write "
                        f"through; default {DEFAULT_LIMIT >> 20}M)")
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus metrics of this mount here")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS",
                   help="comma-separated mount options: FUSE ones (allow_other, ro, noatime, "
                        "...), settings as in fstab (metrics=, cache_size=, write_mode=, log=); "
                        "_netdev, auto, noauto, nofail, user, defaults are ignored")
    p.add_argument("--log", help="log file (default: stderr in the foreground, else mount.log "
                                 "beside the cluster file)")
    p.add_argument("--debug", action="store_true", help="log debug messages")
    p.add_argument("--journal-dir", help="developer option: keep metadata in this local dir")
    return p


def cache_size(text: str) -> int:
    """A size as for mkfs (``64M``), or 0."""
    return 0 if text == "0" else size(text)


def resolve(opts) -> mount_options.MountOptions:
    """Check ``-o`` and merge its settings into ``opts`` (a flag beats ``-o``); UsageError
    for anything wrong."""
    parsed = mount_options.parse_all(opts.options)
    settings = parsed.settings
    try:
        if opts.write_mode is None:
            opts.write_mode = settings.get("write_mode", "parallel")
        if opts.write_mode not in WRITE_MODES:
            raise mount_options.UsageError(
                f"write_mode must be one of {', '.join(WRITE_MODES)}, not {opts.write_mode!r}")
        if opts.cache_size is None:
            opts.cache_size = (cache_size(settings["cache_size"]) if "cache_size" in settings
                               else DEFAULT_LIMIT)
    except argparse.ArgumentTypeError as exc:
        raise mount_options.UsageError(f"cache_size: {exc}") from None
    if opts.metrics is None:
        opts.metrics = settings.get("metrics")
    if opts.metrics is not None:
        opts.metrics_address = metrics_address(opts.metrics)
    else:
        opts.metrics_address = None
    if opts.log is None and "log" in settings:
        opts.log = settings["log"]
    return parsed


def metrics_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); UsageError if malformed."""
    try:
        return split_address(text)
    except ValueError:
        raise mount_options.UsageError(f"metrics address must be HOST:PORT, not {text!r}") \
            from None


def main(args=None) -> int:
    args = sys.argv[1:] if args is None else list(args)
    opts = parser().parse_args(args)
    try:
        parsed = resolve(opts)
        cluster = clusterfile.load(opts.cluster)
        if not os.path.isdir(opts.mountpoint):
            raise ResilfsError(f"mount point {opts.mountpoint} is not a directory")
        if not opts.foreground:
            return _background(args, opts)
        logging.basicConfig(level=logging.DEBUG if opts.debug else logging.INFO,
                            filename=opts.log,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        trio.run(lambda: mount(cluster, opts.mountpoint, journal_dir=opts.journal_dir,
                               write_mode=opts.write_mode, fuse_extra=parsed.fuse,
                               cache_size=opts.cache_size,
                               metrics_address=opts.metrics_address))
    except (ResilfsError, mount_options.UsageError) as exc:
        print(f"{ERROR_PREFIX}{exc}", file=sys.stderr)
        return 1
    return 0


def _background(args: list[str], opts) -> int:
    """Run ``resilfs mount --foreground`` detached; return once it is mounted (or died).

    The daemon's stderr goes to its log, so that the parent can repeat its error line."""
    log_path = os.path.abspath(opts.log or os.path.join(
        os.path.dirname(os.path.abspath(opts.cluster)), "mount.log"))
    cmd = [sys.executable, "-m", "resilfs", "mount", "--foreground", "--log", log_path, *args]
    try:
        log = open(log_path, "ab")
    except OSError as exc:
        print(f"{ERROR_PREFIX}cannot write the log {log_path}: {exc.strerror}", file=sys.stderr)
        return 1
    with log:
        start = log.tell()
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=log, start_new_session=True)
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while time.monotonic() < deadline:
        if os.path.ismount(opts.mountpoint):
            print(f"mounted on {opts.mountpoint} (pid {child.pid}, log {log_path})")
            return 0
        if child.poll() is not None:
            break
        time.sleep(0.05)
    else:
        child.kill()
        child.wait()
    print(_daemon_error(log_path, start) or
          f"{ERROR_PREFIX}the mount did not come up; see {log_path}", file=sys.stderr)
    return 1


def _daemon_error(log_path: str, start: int) -> str | None:
    """The daemon's own error line, if it wrote one to the log after ``start``."""
    try:
        with open(log_path, "rb") as f:
            f.seek(start)
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    errors = [line for line in lines if line.startswith(ERROR_PREFIX)]
    return errors[-1] if errors else None
