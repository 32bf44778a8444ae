"""Frame I/O on trio sockets, shared by the appliance and the stream clients.

``FrameReader`` reads headers and small payloads through one reusable buffer and receives
large payloads straight into their destination (a region's mapping on the appliance, the
caller's buffer on a client), so bulk data is copied once by the kernel and never by Python.
``send_buffers`` sends a list of buffers with ``sendmsg`` and handles partial sends.

On EOF ``FrameReader`` raises ``ConnectionClosed``; socket errors propagate as ``OSError``.
Cancellation in the middle of a frame leaves the stream unusable: callers close it.
"""
import socket

from .protocol import HEADER_SIZE, unpack_header

IOV_MAX = 1024
BUFFER_SIZE = 256 * 1024
DIRECT_THRESHOLD = 64 * 1024  # payload pieces at least this large bypass the buffer


class ConnectionClosed(Exception):
    """The peer closed the connection (possibly in the middle of a frame)."""


class FrameReader:
    """Reads frames from a trio socket; keeps read-ahead bytes in one reusable buffer."""

    def __init__(self, sock, size: int = BUFFER_SIZE, fds: list | None = None):
        self._sock = sock
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        # On Unix sockets, file descriptors passed with SCM_RIGHTS are appended here.
        self._fds = fds

    async def _fill(self, need: int) -> None:
        """Make at least ``need`` bytes available in the buffer."""
        if self._start + need > len(self._buf):
            n = self._end - self._start
            self._view[:n] = self._view[self._start:self._end]
            self._start, self._end = 0, n
        while self._end - self._start < need:
            got = await self._recv_into(self._view[self._end:])
            if not got:
                raise ConnectionClosed("connection closed by peer")
            self._end += got

    async def _recv_into(self, view) -> int:
        if self._fds is None:
            return await self._sock.recv_into(view)
        size = socket.CMSG_SPACE(4 * 4)
        got, ancdata, _flags, _addr = await self._sock.recvmsg_into([view], size)
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(data) - len(data) % 4
                self._fds.extend(int.from_bytes(data[i:i + 4], "little")
                                 for i in range(0, usable, 4))
        return got

    async def read_header(self) -> tuple[int, int, int, int]:
        """(length, op, status, request id) of the next frame; ProtocolViolation if bad."""
        await self._fill(HEADER_SIZE)
        header = self._view[self._start:self._start + HEADER_SIZE]
        self._start += HEADER_SIZE
        return unpack_header(header)

    async def read_bytes(self, n: int) -> bytes:
        """The next ``n`` bytes as a new bytes object (for small payloads)."""
        if n <= len(self._buf):
            await self._fill(n)
            data = bytes(self._view[self._start:self._start + n])
            self._start += n
            return data
        data = bytearray(n)
        await self.read_into(memoryview(data))
        return bytes(data)

    async def read_into(self, dest: memoryview) -> None:
        """Fill ``dest`` (a writable byte memoryview) with the next ``len(dest)`` bytes."""
        n = len(dest)
        take = min(n, self._end - self._start)
        if take:
            dest[:take] = self._view[self._start:self._start + take]
            self._start += take
        pos = take
        while pos < n:
            if n - pos >= DIRECT_THRESHOLD:
                got = await self._recv_into(dest[pos:])
                if not got:
                    raise ConnectionClosed("connection closed by peer")
                pos += got
            else:
                need = n - pos
                self._start = self._end = 0
                await self._fill(need)
                dest[pos:] = self._view[:need]
                self._start = need
                pos = n

    async def skip(self, n: int) -> None:
        """Discard the next ``n`` bytes, without allocating more than the buffer."""
        while n:
            if self._start == self._end:
                self._start = self._end = 0
                await self._fill(1)
            take = min(n, self._end - self._start)
            self._start += take
            n -= take


async def send_buffers(sock, buffers: list, ancdata=()) -> None:
    """Send every byte of ``buffers`` in order (``ancdata`` goes with the first byte)."""
    views = [memoryview(b).cast("B") for b in buffers if len(b)]
    i = 0
    while i < len(views):
        sent = await sock.sendmsg(views[i:i + IOV_MAX], ancdata)
        ancdata = ()
        while sent:
            if sent >= len(views[i]):
                sent -= len(views[i])
                i += 1
            else:
                views[i] = views[i][sent:]
                sent = 0
