"""The embedded default's bookkeeping: what ``resilfs up`` started, for ``down`` and ``status``.

``up`` keeps everything of one mount point in a state dir under /dev/shm (appliance persist
dirs, secret, cluster file, logs) and records the PIDs it started in ``up.json`` there.
"""
import hashlib
import json
import os

STATE_ROOT = "/dev/shm"


def state_dir(mountpoint: str) -> str:
    """The state dir of the mount point (one per absolute path)."""
    digest = hashlib.sha256(os.path.abspath(mountpoint).encode()).hexdigest()[:12]
    return os.path.join(STATE_ROOT, f"resilfs-up-{digest}")


def save(state: str, info: dict) -> None:
    tmp = os.path.join(state, "up.json.tmp")
    with open(tmp, "w") as f:
        json.dump(info, f, indent=1)
    os.rename(tmp, os.path.join(state, "up.json"))


def load(mountpoint: str) -> dict | None:
    """What ``up`` recorded for this mount point, or None."""
    try:
        with open(os.path.join(state_dir(mountpoint), "up.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False
