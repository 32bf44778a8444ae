"""The ``user.resilfs.*`` xattrs of snapshots: which name a command and which a report,
and what a value means.

* ``setxattr(PATH, user.resilfs.snapshot, NAME)``: snapshot PATH as NAME (``create``).
* ``getxattr(PATH, user.resilfs.snapshots)``: JSON list of the snapshots that include PATH.
* ``setxattr(ANY, user.resilfs.snapshot.delete, NAME)``: delete NAME (``delete``).
* ``setxattr(PATH, user.resilfs.snapshot.restore, NAME)``: make PATH as it was (``restore``).

A report set or a command read is refused with EINVAL (a bad NAME too: see
``snapshot_names``).
"""
import errno
import json

from .errors import refuse

SNAPSHOT = b"user.resilfs.snapshot"
LIST = b"user.resilfs.snapshots"
DELETE = b"user.resilfs.snapshot.delete"
RESTORE = b"user.resilfs.snapshot.restore"
NAMES = frozenset((SNAPSHOT, LIST, DELETE, RESTORE))
_COMMANDS = {SNAPSHOT: "create", DELETE: "delete", RESTORE: "restore"}


def command(name: bytes) -> str:
    """What a setxattr of ``name`` asks for: ``create``, ``delete`` or ``restore`` (whose
    value is a snapshot name, checked by ``snapshot_names.check_name``)."""
    action = _COMMANDS.get(name)
    if action is None:
        raise refuse(errno.EINVAL, f"{name!r} is a report, not a command")
    return action


def check_report(name: bytes) -> None:
    """EINVAL unless a getxattr of ``name`` is the report of snapshots."""
    if name != LIST:
        raise refuse(errno.EINVAL, f"{name!r} is a command, not a report")


def encode_listing(entries: list[dict]) -> bytes:
    """The report's value: one JSON list."""
    return json.dumps(entries).encode()
