"""Mount options given with ``-o`` (``resilfs mount``, ``resilfs up``, /etc/fstab).

``-o`` takes a comma-separated list, as mount(8) and mount.fuse3 pass it. Each option is
one of:

* a FUSE or kernel mount option that libfuse understands: ``allow_other``,
  ``allow_root``, and the mount flags ``ro``/``rw``, ``nosuid``/``suid``,
  ``nodev``/``dev``, ``noexec``/``exec``, ``sync``/``async``, ``dirsync``,
  ``[no]atime``, ``[no]diratime``, ``[no]relatime``, ``[no]strictatime``,
  ``[no]lazytime``: passed to FUSE;
* a resilfs setting with a value, the same as the command-line flag of that name, so that
  an fstab line can give them: ``metrics=HOST:PORT``, ``cache_size=SIZE``,
  ``write_mode=MODE``, ``log=PATH``;
* an option only mount(8) and fstab use (``defaults``, ``_netdev``, ``auto``, ``noauto``,
  ``nofail``, ``user``, ``users``, ``nouser``, ``x-*``, ``comment=*``): dropped, as
  mount.fuse3 drops most of them itself.

Anything else raises UsageError naming the options it did not understand; nothing is
started then.
"""
from dataclasses import dataclass, field

FUSE_OPTIONS = frozenset({
    "allow_other", "allow_root",
    "ro", "rw", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "async", "sync",
    "dirsync", "atime", "noatime", "diratime", "nodiratime", "lazytime", "nolazytime",
    "relatime", "norelatime", "strictatime", "nostrictatime",
})
SETTINGS = ("metrics", "cache_size", "write_mode", "log")
MOUNT_ONLY = frozenset({"defaults", "_netdev", "auto", "noauto", "nofail", "user", "users",
                        "nouser"})


class UsageError(Exception):
    """A bad option; the message is one line for the user."""


@dataclass
class MountOptions:
    fuse: list[str] = field(default_factory=list)  # for FUSE, in the order given
    settings: dict[str, str] = field(default_factory=dict)  # resilfs settings by name


def parse(text: str) -> MountOptions:
    """Split one ``-o`` value (see the module docstring); UsageError for unknown options."""
    result = MountOptions()
    unknown = []
    for option in text.split(","):
        name, eq, value = option.partition("=")
        if not option or option in MOUNT_ONLY or option.startswith(("x-", "X-", "comment=")):
            continue
        if option in FUSE_OPTIONS:
            if option not in result.fuse:
                result.fuse.append(option)
        elif eq and name in SETTINGS and value:
            result.settings[name] = value
        else:
            unknown.append(option)
    if unknown:
        raise UsageError(f"unsupported mount option(s): {', '.join(unknown)} (FUSE options "
                         f"such as allow_other, ro, noatime; resilfs settings "
                         f"{', '.join(s + '=' for s in SETTINGS)})")
    return result


def parse_all(values: list[str]) -> MountOptions:
    """Several ``-o`` values, as if joined by commas."""
    return parse(",".join(values))
