"""Opening the socket of a client connection (tcp, and the shm transport's Unix socket)."""
import math
import socket

import trio

from ..protocol_io import nonblocking
from .base import ApplianceUnavailable


async def open_socket(family: int, address, timeout: float, what: str):
    """A connected non-blocking socket, or ApplianceUnavailable within ``timeout`` seconds."""
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        with trio.fail_after(timeout):
            await sock.connect(address)
    except trio.TooSlowError:
        sock.close()
        raise ApplianceUnavailable(f"cannot connect to appliance {what}: no answer within "
                                   f"{timeout} s") from None
    except OSError as e:
        sock.close()
        raise ApplianceUnavailable(f"cannot connect to appliance {what}: "
                                   f"{e.strerror or e}") from None
    if family != socket.AF_UNIX:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return nonblocking(sock)


def finite_timeout(timeout: float) -> float:
    """``timeout`` if it is a positive finite number of seconds, else ValueError."""
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return timeout
