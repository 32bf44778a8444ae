"""Create, list, delete and restore snapshots of files and directory trees on a mount.

  resilfs snapshot create PATH NAME     snapshot PATH (file or directory) as NAME
  resilfs snapshot list PATH [--json]   snapshots that include PATH (all, on the mount)
  resilfs snapshot delete MOUNT NAME    delete NAME and free its regions
  resilfs snapshot restore PATH NAME    put PATH back as NAME has it

The snapshot NAME is readable (read-only) at MOUNT/.snapshots/NAME. These wrap the
``user.resilfs.snapshot*`` extended attributes (docs/snapshots.md).
"""
import argparse
import datetime
import errno
import json
import os
import sys

SNAPSHOT = "user.resilfs.snapshot"
LIST = "user.resilfs.snapshots"
DELETE = "user.resilfs.snapshot.delete"
RESTORE = "user.resilfs.snapshot.restore"


def resilfs_mount(path: str) -> str | None:
    """The resilfs mount point that ``path`` lies on, or None."""
    real = os.path.realpath(path)
    best = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            point = fields[4].encode().decode("unicode_escape")
            if fields[sep + 1] == "fuse.resilfs" and (
                    real == point or real.startswith(point.rstrip("/") + "/")):
                if best is None or len(point) > len(best):
                    best = point
    return best


def _size(n: float) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def main(args=None) -> int:
    p = argparse.ArgumentParser(prog="resilfs snapshot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for command, first in (("create", "PATH"), ("delete", "MOUNT"), ("restore", "PATH")):
        c = sub.add_parser(command)
        c.add_argument("path", metavar=first)
        c.add_argument("name", metavar="NAME")
    c = sub.add_parser("list")
    c.add_argument("path", metavar="PATH")
    c.add_argument("--json", action="store_true", help="print the JSON report")
    opts = p.parse_args(args)
    prog = f"resilfs snapshot {opts.command}"
    if resilfs_mount(opts.path) is None:
        print(f"{prog}: {opts.path}: not on a resilfs mount ({os.strerror(errno.EINVAL)})",
              file=sys.stderr)
        return 1
    try:
        if opts.command == "list":
            entries = json.loads(os.getxattr(opts.path, LIST))
            if opts.json:
                print(json.dumps(entries, indent=2))
            else:
                print(f"{'NAME':<24} {'TIME':<19} {'TYPE':<9} {'FILES':>7} {'SIZE':>9}  "
                      f"HEALTH")
                for e in entries:
                    when = datetime.datetime.fromtimestamp(e["time"]).strftime(
                        "%Y-%m-%d %H:%M:%S")
                    print(f"{e['name']:<24} {when:<19} {e['type']:<9} {e['files']:>7} "
                          f"{_size(e['size']):>9}  {e['health']}")
            return 0
        attribute = {"create": SNAPSHOT, "delete": DELETE, "restore": RESTORE}[opts.command]
        os.setxattr(opts.path, attribute, os.fsencode(opts.name))
    except OSError as exc:
        print(f"{prog}: {opts.path}: {opts.name if 'name' in opts else ''}: "
              f"{exc.strerror}", file=sys.stderr)
        return 1
    if opts.command == "create":
        mount = resilfs_mount(opts.path)
        print(f"snapshot {opts.name} of {opts.path}: "
              f"{os.path.join(mount, '.snapshots', opts.name)}")
    return 0
