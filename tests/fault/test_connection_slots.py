"""Connections that never authenticate take slots of their own peer address only: many
idle connections from one address do not lock the cluster's clients out."""
import socket

from resilfs.protocol import HEADER_SIZE
from resilfs.transport import connect
from tests import appliances

launcher, appliance = appliances.launcher, appliances.appliance  # fixtures

IDLE = 300  # more than the appliance's connection limit of before


def open_idle(port: int, source: str, count: int) -> tuple[list[socket.socket], int]:
    """``count`` connections from ``source`` that never authenticate; returns them and how
    many the appliance kept open (each greeted with HELLO; the rest are closed)."""
    socks, kept = [], 0
    for _ in range(count):
        s = socket.socket()
        s.bind((source, 0))
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        socks.append(s)
    for s in socks:
        try:
            if len(s.recv(HEADER_SIZE, socket.MSG_WAITALL)) == HEADER_SIZE:
                kept += 1
        except ConnectionResetError:
            pass
    return socks, kept


async def test_idle_connections_do_not_lock_out_clients(launcher, appliance):
    socks, kept = open_idle(appliance.port, "127.0.0.2", IDLE)
    try:
        assert kept < IDLE  # the intruder's address got a few slots, not all of them
        client = await connect(appliance.address, secret=launcher.secret)
        st = await client.stat()
        assert st.capacity > 0
        await client.aclose()
    finally:
        for s in socks:
            s.close()
