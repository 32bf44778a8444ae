"""Client-side memory access to appliances: ``connect()`` picks a transport by name.

Transports: ``tcp`` (default, anywhere), ``shm`` (appliance on this host: regions are mapped
and copied directly), ``rdma`` (pyverbs; needs an RDMA device). See ``base.ApplianceClient``
for the interface and ``docs/protocol.md`` for the wire format.
"""
from ..auth import SecretFileError, load_secret
from .base import DEFAULT_TIMEOUT, ApplianceClient, TransportError

TRANSPORTS = ("tcp", "shm", "rdma")

__all__ = ["DEFAULT_TIMEOUT", "TRANSPORTS", "SecretFileError", "UnknownTransport", "connect",
           "load_secret", "unavailable_reason"]


class UnknownTransport(TransportError, ValueError):
    """The transport name is not one of TRANSPORTS, or it cannot run on this machine."""


def unavailable_reason(transport: str) -> str | None:
    """Why ``transport`` cannot run on this machine, or None if it can."""
    if transport == "rdma":
        from . import rdma
        return rdma.unavailable_reason()
    if transport not in TRANSPORTS:
        return f"unknown transport {transport!r}; choose one of {', '.join(TRANSPORTS)}"
    return None


async def connect(address: str, *, transport: str = "tcp", secret: bytes,
                  timeout: float = DEFAULT_TIMEOUT) -> ApplianceClient:
    """Connect to the appliance at ``HOST:PORT`` and authenticate with the cluster secret.

    Raises ApplianceUnavailable (cannot reach it within ``timeout``), AuthenticationFailed
    (secrets differ), UnknownTransport (bad transport name, or rdma without an RDMA device),
    ValueError (malformed address or timeout). Cancellation closes the half-open connection.
    """
    if transport == "tcp":
        from .tcp import TcpClient
        return await TcpClient.create(address, secret=secret, timeout=timeout)
    if transport == "shm":
        from .shm import ShmClient
        return await ShmClient.create(address, secret=secret, timeout=timeout)
    reason = unavailable_reason(transport)
    if reason:
        raise UnknownTransport(reason if transport not in TRANSPORTS
                               else f"transport {transport} is unavailable: {reason}")
    from .rdma import RdmaClient
    return await RdmaClient.create(address, secret=secret, timeout=timeout)
