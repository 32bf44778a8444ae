"""The ``resilfs`` command: dispatches ``resilfs SUBCOMMAND ...`` to ``resilfs.cli.SUBCOMMAND``.

Each subcommand is a module of this package with ``main(args=None) -> int`` and a one-line
``__doc__``. User errors exit with one line on stderr and a non-zero code, never a traceback.

``resilfs CLUSTER_FILE MOUNTPOINT [-o OPTIONS]``, whose first word is a path (it holds a
``/`` or names a file), is ``resilfs mount ...``: the form mount.fuse3 runs for an
/etc/fstab line of type ``fuse.resilfs``.
"""
import importlib
import os
import sys

# subcommand name -> module name in this package
SUBCOMMANDS = {
    "appliance": "appliance",
    "mkfs": "mkfs",
    "mount": "mount",
    "umount": "umount",
    "up": "up",
    "down": "down",
    "status": "status",
    "scrub": "scrub",
    "fsck": "fsck",
    "snapshot": "snapshot",
}


def _usage() -> str:
    lines = ["usage: resilfs SUBCOMMAND [ARGS...]", "", "subcommands:"]
    for name, module in SUBCOMMANDS.items():
        doc = importlib.import_module(f"{__package__}.{module}").__doc__ or ""
        lines.append(f"  {name:<12} {doc.strip().splitlines()[0] if doc.strip() else ''}")
    lines.append("")
    lines.append("'resilfs CLUSTER_FILE MOUNTPOINT -o OPTIONS' is 'resilfs mount ...' (the "
                 "form mount.fuse3 runs for fstab).")
    lines.append("'resilfs SUBCOMMAND --help' tells more.")
    return "\n".join(lines)


def main(args: list[str] | None = None) -> int:
    args = sys.argv[1:] if args is None else args
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        from .. import __version__
        print(f"resilfs {__version__}")
        return 0
    module = SUBCOMMANDS.get(args[0])
    if module is None and (os.sep in args[0] or os.path.isfile(args[0])):
        return importlib.import_module(f"{__package__}.mount").main(args)
    if module is None:
        print(f"resilfs: unknown subcommand {args[0]!r} (see 'resilfs --help')", file=sys.stderr)
        return 2
    return importlib.import_module(f"{__package__}.{module}").main(args[1:])


if __name__ == "__main__":
    sys.exit(main())
