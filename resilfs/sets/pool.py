"""Connections to the cluster's appliances, shared by every resiliency set of a mount.

The pool holds at most one client per appliance address. A caller that sees an appliance
fail (an error or a timeout from its client) reports it with ``mark_failed``; the pool
closes that client and reconnects on a later ``client()`` call, at most once per
``retry_interval`` so that a dead appliance costs a fast failure, not a connect timeout
on every request.
"""
import logging
from collections.abc import Awaitable, Callable, Iterable
from contextlib import asynccontextmanager

import trio

from ..transport.base import (
    DEFAULT_TIMEOUT,
    ApplianceClient,
    ApplianceUnavailable,
    MappedRegions,
    TransportError,
)

log = logging.getLogger(__name__)

Connect = Callable[[str], Awaitable[ApplianceClient]]


class AppliancePool:
    """Clients of a fixed list of appliances, reconnecting to ones that come back.

    ``connect(address)`` opens a client (for example ``functools.partial(transport.connect,
    transport="shm", secret=...)``). Not thread-safe; use from one trio loop.
    """

    def __init__(self, addresses: Iterable[str], connect: Connect, *,
                 timeout: float = DEFAULT_TIMEOUT, retry_interval: float = 0.2):
        self.addresses = list(dict.fromkeys(addresses))
        self.timeout = timeout
        self.retry_interval = retry_interval
        self._connect = connect
        self._clients: dict[str, ApplianceClient] = {}
        self._mapped: dict[str, MappedRegions] = {}  # the clients that offer mapped memory
        self._last_attempt: dict[str, float] = {}
        self._locks = {address: trio.Lock() for address in self.addresses}

    @classmethod
    async def create(cls, addresses: Iterable[str], connect: Connect, **kwargs) -> "AppliancePool":
        """A pool with a connection attempt made to every appliance (failures only logged)."""
        pool = cls(addresses, connect, **kwargs)
        async with trio.open_nursery() as nursery:
            for address in pool.addresses:
                nursery.start_soon(pool._try_connect, address)
        return pool

    def add(self, address: str) -> None:
        """Make one more appliance known to the pool (no connection yet)."""
        if address not in self._locks:
            self.addresses.append(address)
            self._locks[address] = trio.Lock()

    def is_up(self, address: str) -> bool:
        """Whether the pool holds a connection to the appliance it has not seen fail."""
        return address in self._clients

    def connected(self, address: str) -> ApplianceClient | None:
        """The current client of ``address`` without connecting, or None."""
        return self._clients.get(address)

    def mapped(self, address: str) -> MappedRegions | None:
        """The mapped-memory access (``ApplianceClient.mapped()``) of the current client of
        ``address``, or None (not connected, or its transport does not map regions here)."""
        return self._mapped.get(address)

    def up(self) -> list[str]:
        return [a for a in self.addresses if a in self._clients]

    async def _try_connect(self, address: str) -> None:
        try:
            await self.client(address)
        except ApplianceUnavailable as e:
            log.warning("appliance %s unavailable: %s", address, e)

    async def client(self, address: str) -> ApplianceClient:
        """The client of ``address``, connecting if needed.

        Raises ApplianceUnavailable when the appliance is not connected and a connection
        attempt fails, times out, or was already tried less than ``retry_interval`` ago.
        """
        client = self._clients.get(address)
        if client is not None:
            return client
        lock = self._locks.get(address)
        if lock is None:
            raise ApplianceUnavailable(f"appliance {address} is not in the pool")
        async with lock:
            client = self._clients.get(address)
            if client is not None:
                return client
            now = trio.current_time()
            last = self._last_attempt.get(address)
            if last is not None and now - last < self.retry_interval:
                raise ApplianceUnavailable(f"appliance {address} is down (retrying shortly)")
            self._last_attempt[address] = now
            client = await self._open(address)
            self._clients[address] = client
            mapped = client.mapped()
            if mapped is not None:
                self._mapped[address] = mapped
            log.info("connected to appliance %s", address)
            return client

    @asynccontextmanager
    async def private(self, address: str):
        """A connection of its own to ``address``, outside the pool, closed on exit: for a
        long request (a clone) that must not hold up the pool's connection, which the
        appliance serves in order. Raises ApplianceUnavailable if the appliance is not
        connected or the connection attempt fails or times out."""
        if address not in self._clients:
            raise ApplianceUnavailable(f"appliance {address} is down")
        client = await self._open(address)
        try:
            yield client
        finally:
            await self._close(address, client)

    async def _open(self, address: str):
        """A new connection to ``address``; ApplianceUnavailable if the attempt fails or
        takes over twice the request timeout."""
        try:
            with trio.fail_after(self.timeout * 2):
                return await self._connect(address)
        except trio.TooSlowError:
            raise ApplianceUnavailable(f"appliance {address}: connect timed out") from None
        except TransportError as e:
            raise ApplianceUnavailable(f"appliance {address}: {e}") from e
        except OSError as e:
            raise ApplianceUnavailable(f"appliance {address}: {e.strerror or e}") from e

    async def mark_failed(self, address: str, client: ApplianceClient | None = None) -> None:
        """Drop the connection to ``address`` after an error; a later ``client()`` reconnects.

        ``client`` names the failed connection, so a report about an old connection does not
        drop a newer one. Closing is best effort and never raises.
        """
        current = self._clients.get(address)
        if current is None or (client is not None and client is not current):
            return
        del self._clients[address]
        self._mapped.pop(address, None)
        self._last_attempt[address] = trio.current_time()
        log.warning("appliance %s marked failed", address)
        await self._close(address, current)

    async def probe(self) -> list[str]:
        """Ask every connected appliance for its stat, concurrently; drop the ones that fail.

        An appliance that died while nothing used it is otherwise noticed only by the next
        request that touches it; the rebuild worker probes so that idle sets degrade (and
        rebuild) too. Returns the addresses dropped.

        A probe is bounded by the client's own timeout, which fails a connection only when
        the appliance sends nothing for ``timeout`` (plus the allowance of the request it
        is serving). Not by a deadline of its own: the connection is pipelined and the
        appliance serves its requests in order, so a STAT queued behind slow requests (forward
        writes each waiting out a dead peer, a clone) waits for them while the appliance
        answers steadily. Such a deadline dropped every healthy appliance of an ec:4+2 set
        at once while one peer was stopped (issue 13: the soak's set beyond its tolerance).
        """
        dropped = []

        async def probe_one(address: str, client: ApplianceClient) -> None:
            try:
                await client.stat()
            except TransportError as e:
                log.warning("appliance %s did not answer a probe: %s", address, e)
                dropped.append(address)
                await self.mark_failed(address, client)

        async with trio.open_nursery() as nursery:
            for address, client in list(self._clients.items()):
                nursery.start_soon(probe_one, address, client)
        return dropped

    async def free_memory(self) -> dict[str, int]:
        """Free bytes of each connected appliance, one STAT each in turn (an appliance that
        fails to answer is left out; never raises)."""
        free = {}
        for address in self.up():
            try:
                st = await (await self.client(address)).stat()
            except TransportError:
                continue
            free[address] = max(st.capacity - st.used, 0)
        return free

    async def _close(self, address: str, current: ApplianceClient) -> None:
        with trio.move_on_after(self.timeout, shield=True):
            try:
                await current.aclose()
            except Exception as e:  # noqa: BLE001 - the connection is being dropped anyway
                log.debug("closing client of %s: %s", address, e)

    async def aclose(self) -> None:
        """Close every connection (best effort)."""
        while self._clients:
            address, client = self._clients.popitem()
            self._mapped.pop(address, None)
            await self._close(address, client)
