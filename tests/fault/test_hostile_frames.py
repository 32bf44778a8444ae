"""Hostile input: well over 10,000 malformed or random frames against a live appliance.

Frames are generated with hypothesis (headers with any field values, valid ops with mangled
payloads, lies about lengths, unauthenticated requests) and sent over raw sockets, plus raw
random bytes. Meanwhile a well-behaved client keeps using its region on the same appliance.
Afterwards the appliance is still up, its RSS grew by a bounded amount, and that client's
data and connection are intact.
"""
import os
import socket
import struct

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilfs import auth
from resilfs.protocol import HEADER, HEADER_SIZE, MAX_FRAME, VERSION, Op, unpack_header
from resilfs.transport import connect
from tests import appliances

launcher, appliance = appliances.launcher, appliances.appliance  # fixtures

OPS = [v for k, v in vars(Op).items() if not k.startswith("_")]
RSS_GROWTH_LIMIT = 64 << 20
FRAMES = 12000  # at least this many frames are sent


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def authenticate(sock: socket.socket, secret: bytes) -> None:
    header = sock.recv(HEADER_SIZE, socket.MSG_WAITALL)
    length = unpack_header(header)[0]
    nonce = sock.recv(length, socket.MSG_WAITALL)[:auth.NONCE_SIZE]
    client_nonce = auth.new_nonce()
    proof = client_nonce + auth.client_proof(secret, nonce, client_nonce)
    sock.sendall(HEADER.pack(len(proof), VERSION, Op.AUTH, 0, 1) + proof)
    reply = sock.recv(HEADER_SIZE, socket.MSG_WAITALL)
    assert unpack_header(reply)[2] == 0, "authentication failed"
    sock.recv(auth.MAC_SIZE, socket.MSG_WAITALL)


def frame(op, payload, *, version=VERSION, length=None, status=0, request_id=7) -> bytes:
    length = len(payload) if length is None else length
    return HEADER.pack(length, version, op, status, request_id) + payload


u64 = st.integers(0, 2**64 - 1)
small = st.integers(0, 4096)
payloads = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda *f: struct.pack("<QQQQ", *f), u64, u64, small, small),  # range-shaped
    st.builds(lambda n, rest: struct.pack("<I", n) + rest, st.integers(0, 2**32 - 1),
              st.binary(max_size=300)),  # count-prefixed
    st.builds(lambda n, s: struct.pack("<Q", n) + struct.pack("<I", len(s)) + s,
              u64, st.binary(max_size=50)),  # alloc-shaped
)
frames = st.one_of(
    st.builds(frame, st.sampled_from(OPS), payloads),  # real ops, mangled payloads
    st.builds(frame, st.integers(0, 255), payloads),  # any op
    st.builds(frame, st.sampled_from(OPS), payloads, version=st.integers(0, 255)),
    st.builds(frame, st.sampled_from(OPS), payloads,  # lies about the length
              length=st.one_of(st.integers(0, 1 << 16), st.integers(MAX_FRAME - 10, 2**32 - 1))),
    st.builds(frame, st.sampled_from(OPS), payloads, status=st.integers(0, 65535),
              request_id=u64),
    st.binary(min_size=1, max_size=64),  # not a frame at all
)


class Storm:
    def __init__(self, address: tuple[str, int], secret: bytes):
        self.address = address
        self.secret = secret
        self.frames = 0
        self.connections = 0

    def send(self, chunks: list[bytes], authenticated: bool) -> None:
        with socket.create_connection(self.address, timeout=5) as sock:
            self.connections += 1
            if authenticated:
                authenticate(sock, self.secret)
            try:
                for chunk in chunks:
                    sock.sendall(chunk)
                    self.frames += 1
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):  # read replies until the appliance closes
                    pass
            except OSError:
                pass  # the appliance hung up on us (reset, not connected): fine

    def run(self) -> None:
        @settings(max_examples=1500, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.lists(frames, min_size=1, max_size=12), st.booleans())
        def generated(chunks, unauthenticated):
            self.send(chunks, authenticated=not unauthenticated)

        generated()
        rng = os.urandom
        rounds = 0
        while rounds < 500 or self.frames < FRAMES:  # raw random bytes, with and without auth
            self.send([rng(n) for n in (16, 100, 4096, 17)], authenticated=True)
            self.send([rng(300)], authenticated=False)
            rounds += 1


async def test_hostile_frames_change_nothing(launcher, appliance):
    bystander = await connect(appliance.address, secret=launcher.secret)
    region = await bystander.alloc(1 << 20, "bystander")
    data = os.urandom(1 << 20)
    await bystander.write(region, 0, data)
    rss_before = rss(appliance.pid)

    storm = Storm(("127.0.0.1", appliance.port), launcher.secret)
    checks = 0
    async with trio.open_nursery() as nursery:
        async def keep_checking():
            nonlocal checks
            while True:
                assert bytes(await bystander.read(region, 0, len(data))) == data
                checks += 1
                await trio.sleep(0.01)

        nursery.start_soon(keep_checking)
        await trio.to_thread.run_sync(storm.run)
        nursery.cancel_scope.cancel()

    assert storm.frames >= FRAMES, storm.frames
    assert checks > 10
    assert appliance.running
    assert rss(appliance.pid) - rss_before < RSS_GROWTH_LIMIT
    assert bytes(await bystander.read(region, 0, len(data))) == data
    assert (await bystander.stat()).appliance_id
    await bystander.aclose()
    async with await connect(appliance.address, secret=launcher.secret) as fresh:
        assert bytes(await fresh.read(region, 0, 16)) == data[:16]
