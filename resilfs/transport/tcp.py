"""The tcp transport: the pipelined protocol client over one TCP connection per appliance."""
import socket

from ..protocol import split_address
from .sockets import finite_timeout, open_socket
from .stream import StreamClient


class TcpClient(StreamClient):
    """An ``ApplianceClient`` over TCP; see ``stream.StreamClient`` for failure semantics."""

    @classmethod
    async def create(cls, address: str, *, secret: bytes, timeout: float) -> "TcpClient":
        """Connect and authenticate; ApplianceUnavailable or AuthenticationFailed if not.

        Raises ValueError for a malformed address.
        """
        host, port = split_address(address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = await open_socket(family, (host, port), finite_timeout(timeout), address)
        client = cls(address, sock, timeout)
        await client._handshake(secret)
        return client
