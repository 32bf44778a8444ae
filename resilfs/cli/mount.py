"""Mount a filesystem of a cluster file on a directory."""
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
from ..sets import WRITE_MODES
from .mkfs import size

MOUNT_TIMEOUT = 30.0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="resilfs mount", description=__doc__)
    p.add_argument("cluster", help="cluster file (TOML: name, transport, secret_file, appliances)")
    p.add_argument("mountpoint")
    p.add_argument("--foreground", action="store_true", help="serve in this process")
    p.add_argument("--write-mode", choices=WRITE_MODES, default="parallel")
    p.add_argument("--cache-size", type=cache_size, default=DEFAULT_LIMIT,
                   help="memory for the write-behind cache of small writes (e.g. 64M; 0: write "
                        f"through; default {DEFAULT_LIMIT >> 20}M)")
    p.add_argument("-o", dest="options", default="", help="FUSE options, e.g. allow_other")
    p.add_argument("--log", help="log file (default: stderr in the foreground)")
    p.add_argument("--debug", action="store_true", help="log debug messages")
    p.add_argument("--journal-dir", help="developer option: keep metadata in this local dir")
    return p


def cache_size(text: str) -> int:
    """A size as for mkfs (``64M``), or 0."""
    return 0 if text == "0" else size(text)


def main(args=None) -> int:
    args = sys.argv[1:] if args is None else list(args)
    opts = parser().parse_args(args)
    try:
        cluster = clusterfile.load(opts.cluster)
        if not os.path.isdir(opts.mountpoint):
            raise ResilfsError(f"mount point {opts.mountpoint} is not a directory")
        extra = [o for o in opts.options.split(",") if o]
        bad = [o for o in extra if o not in ("allow_other", "allow_root", "ro")]
        if bad:
            raise ResilfsError(f"unsupported mount option(s): {', '.join(bad)}")
        if not opts.foreground:
            return _background(args, opts)
        logging.basicConfig(level=logging.DEBUG if opts.debug else logging.INFO,
                            filename=opts.log,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        trio.run(lambda: mount(cluster, opts.mountpoint, journal_dir=opts.journal_dir,
                               write_mode=opts.write_mode, fuse_extra=extra,
                               cache_size=opts.cache_size))
    except ResilfsError as exc:
        print(f"resilfs mount: {exc}", file=sys.stderr)
        return 1
    return 0


def _background(args: list[str], opts) -> int:
    """Run ``resilfs mount --foreground`` detached; return once it is mounted (or died)."""
    log_path = opts.log or os.path.join(os.path.dirname(os.path.abspath(opts.cluster)),
                                        "mount.log")
    cmd = [sys.executable, "-m", "resilfs", "mount", "--foreground", "--log", log_path, *args]
    child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
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
    print(f"resilfs mount: the mount did not come up; see {log_path}", file=sys.stderr)
    return 1
