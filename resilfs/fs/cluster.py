"""Cluster files: which appliances hold a filesystem, and how to reach them.

A cluster file is TOML::

    name = "home"                    # the filesystem's name: owner of its regions and records
    transport = "tcp"                # tcp (default) or shm (appliances on this host)
    secret_file = "secret"           # the cluster secret; relative to this file
    appliances = ["127.0.0.1:7400", "127.0.0.1:7401", "127.0.0.1:7402"]

``load`` raises ClusterFileError with a one-line message for anything missing or invalid.
"""
import functools
import os
import re
import tomllib
from dataclasses import dataclass

from ..auth import SecretFileError, load_secret
from ..errors import ResilfsError
from ..sets import AppliancePool
from ..transport import TRANSPORTS, connect

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ADDRESS = re.compile(r"^[^\s:]+:\d{1,5}$")


class ClusterFileError(ResilfsError):
    """The cluster file is unreadable or invalid; the message says where."""


@dataclass(frozen=True)
class Cluster:
    name: str
    transport: str
    secret: bytes
    appliances: tuple[str, ...]

    async def pool(self) -> AppliancePool:
        """A pool of connections to the appliances (failures to connect are only logged)."""
        return await AppliancePool.create(
            self.appliances, functools.partial(connect, transport=self.transport,
                                               secret=self.secret))


def load(path: str) -> Cluster:
    """Read and check a cluster file."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ClusterFileError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ClusterFileError(f"{path}: not valid TOML: {exc}") from None
    unknown = set(doc) - {"name", "transport", "secret_file", "appliances"}
    if unknown:
        raise ClusterFileError(f"{path}: unknown keys {', '.join(sorted(unknown))}")
    name = doc.get("name", "resilfs")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ClusterFileError(f"{path}: name must be 1-64 letters, digits, '.', '_' or '-'")
    transport = doc.get("transport", "tcp")
    if transport not in TRANSPORTS:
        raise ClusterFileError(f"{path}: transport must be one of {', '.join(TRANSPORTS)}")
    appliances = doc.get("appliances")
    if (not isinstance(appliances, list) or not appliances
            or not all(isinstance(a, str) and _ADDRESS.match(a) for a in appliances)):
        raise ClusterFileError(f"{path}: appliances must be a list of \"HOST:PORT\" strings")
    if len(set(appliances)) != len(appliances):
        raise ClusterFileError(f"{path}: an appliance is listed twice")
    secret_file = doc.get("secret_file")
    if not isinstance(secret_file, str):
        raise ClusterFileError(f"{path}: secret_file (path of the cluster secret) is missing")
    secret_path = os.path.join(os.path.dirname(os.path.abspath(path)), secret_file)
    try:
        secret = load_secret(secret_path)
    except SecretFileError as exc:
        raise ClusterFileError(f"{path}: {exc}") from None
    return Cluster(name, transport, secret, tuple(appliances))


def write(path: str, name: str, transport: str, secret_file: str, appliances) -> None:
    """Write a cluster file (for ``resilfs up`` and tests)."""
    quoted = ", ".join(f'"{a}"' for a in appliances)
    with open(path, "w") as f:
        f.write(f'name = "{name}"\ntransport = "{transport}"\n'
                f'secret_file = "{secret_file}"\nappliances = [{quoted}]\n')
