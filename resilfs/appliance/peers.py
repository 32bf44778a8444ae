"""The appliance side of forwarded writes (claims 6-8): fold a change into a region, and the
connections to peer appliances that carry it to their regions.

``fold`` applies new data or a delta to a region's bytes. ``Forwarder`` keeps one
authenticated client connection per peer appliance and sends APPLY_DELTA to every target of
a forwarded write in parallel. Peers answer within ``PEER_TIMEOUT`` (half the clients'
default timeout), so the forwarding appliance can report a failed target to its client
before that client's own timeout gives up on it.
"""
import logging

import trio

from ..codec import gf_mad, xor_into
from ..transport.base import DEFAULT_TIMEOUT, ApplianceUnavailable, RegionHandle, TransportError
from ..transport.tcp import TcpClient

log = logging.getLogger(__name__)

PEER_TIMEOUT = DEFAULT_TIMEOUT / 2


def fold(target: memoryview, data, coefficient: int) -> None:
    """0: copy ``data`` over ``target``; 1: XOR it in; else GF(2^8) multiply-accumulate."""
    if coefficient == 0:
        target[:] = data
    elif coefficient == 1:
        xor_into(target, [data], accumulate=True)
    else:
        gf_mad(target, coefficient, data)


class Forwarder:
    """Client connections from this appliance to its peers, opened on first use."""

    def __init__(self, secret: bytes):
        self._secret = secret
        self._clients: dict[str, TcpClient] = {}
        self._locks: dict[str, trio.Lock] = {}

    async def _client(self, address: str) -> TcpClient:
        async with self._locks.setdefault(address, trio.Lock()):
            client = self._clients.get(address)
            if client is None:
                client = await TcpClient.create(address, secret=self._secret,
                                                timeout=PEER_TIMEOUT)
                self._clients[address] = client
            return client

    async def forward(self, targets, offset: int, new, delta, deadline: float) -> list[str]:
        """Apply the write to every (address, region id, key, coefficient) target; return a
        description of each failure. Cancellation abandons the targets not yet acknowledged.

        Nothing is sent after ``deadline`` (``trio.current_time()``, a monotonic clock that
        runs on while the process is stopped): past it the client has given up on this
        write and may have rebuilt or rewritten the targets, so a late delta (this
        appliance was stopped, SIGSTOP or a stall, while holding it) would corrupt them.
        Such a target is reported failed instead.
        """
        failures: list[str] = []

        async def one(address: str, region_id: int, key: int, coefficient: int) -> None:
            # the peer checks the real size; the handle only needs to cover the range
            region = RegionHandle(address, region_id, offset + len(new), key)
            client = None
            try:
                client = await self._client(address)
                if trio.current_time() > deadline:
                    failures.append(f"{address} region {region_id}: not sent, the client "
                                    "gave up on this write")
                    return
                await client.apply_delta(region, offset, new if coefficient == 0 else delta,
                                         coefficient)
            except ApplianceUnavailable as e:
                failures.append(f"{address} region {region_id}: {e}")
                if client is not None:
                    await self._drop(address, client)
            except TransportError as e:
                failures.append(f"{address} region {region_id}: {e}")

        async with trio.open_nursery() as nursery:
            for target in targets:
                nursery.start_soon(one, *target)
        for failure in failures:
            log.warning("forwarded write not applied: %s", failure)
        return failures

    async def _drop(self, address: str, client: TcpClient) -> None:
        """Forget and close the connection to a peer that failed or did not answer (a
        later forward connects again). Closed, so nothing more is sent on it; a request
        the peer already received is still applied when the peer gets to it, which is
        why the client fails the targets that did not acknowledge (sets/forward.py)."""
        if self._clients.get(address) is client:
            del self._clients[address]
        with trio.CancelScope(shield=True):
            await client.aclose()

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
