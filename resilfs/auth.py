"""The cluster secret and the HMAC challenge-response that proves both sides hold it.

The appliance sends a random nonce in its HELLO; the client answers with its own nonce and
``HMAC-SHA256(secret, "resilfs client" || appliance nonce || client nonce)``; the appliance
answers with ``HMAC-SHA256(secret, "resilfs appliance" || appliance nonce || client nonce)``
so the client knows it reached a holder of the secret too. The secret never crosses the wire.
"""
import hashlib
import hmac
import os
import stat

from .errors import ResilfsError

NONCE_SIZE = 32
MAC_SIZE = 32
MIN_SECRET = 16


class SecretFileError(ResilfsError):
    """The secret file is missing, unreadable, too short or readable by others."""


def load_secret(path) -> bytes:
    """Read the cluster secret; refuse a file that is not mode 0600 (or stricter) or too short.

    Raises SecretFileError with a one-line message meant for a user.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise SecretFileError(f"cannot open secret file {path}: {e.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise SecretFileError(f"secret file {path} is not a regular file")
        if mode & 0o077:
            raise SecretFileError(
                f"secret file {path} has mode {stat.S_IMODE(mode):04o}; it must be 0600 "
                f"(run: chmod 600 {path})")
        with os.fdopen(os.dup(fd), "rb") as f:
            secret = f.read(65536).strip()
    finally:
        os.close(fd)
    if len(secret) < MIN_SECRET:
        raise SecretFileError(f"secret file {path} holds fewer than {MIN_SECRET} bytes")
    return secret


def write_secret(path) -> bytes:
    """Create a new random secret file with mode 0600 and return the secret."""
    secret = os.urandom(32).hex().encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret + b"\n")
    return secret


def new_nonce() -> bytes:
    return os.urandom(NONCE_SIZE)


def client_proof(secret: bytes, appliance_nonce: bytes, client_nonce: bytes) -> bytes:
    return hmac.new(secret, b"resilfs client" + appliance_nonce + client_nonce,
                    hashlib.sha256).digest()


def appliance_proof(secret: bytes, appliance_nonce: bytes, client_nonce: bytes) -> bytes:
    return hmac.new(secret, b"resilfs appliance" + appliance_nonce + client_nonce,
                    hashlib.sha256).digest()


def verify(expected: bytes, given: bytes) -> bool:
    return hmac.compare_digest(expected, given)
