"""A hostile or broken appliance under a real mount: one bad reply, and the mount daemon
marks that appliance failed and goes on; no file changes.

The filesystem is parity:2+1 on three appliances, so the one behind the adversary holds a
member of every data set and a copy of the metadata journal: the bad reply is the next
reply of any kind (``any``: a journal record, a probe...) or the next reply to a data
read or write (``data``). Afterwards the set rebuilds its member, and scrub and fsck find
nothing.

The adversary is a small man-in-the-middle in front of a real appliance (it has to pass the
real handshake): it forwards the protocol faithfully until armed, then answers the next
reply frame badly, once: a wrong length, a request id nobody asked for, garbage, a reply
held back until the client gives up, or half a reply and a closed connection. The
appliance it fronts holds a copy of the metadata journal, so every commit reaches it.
"""
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from resilfs.appliance.launcher import ApplianceLauncher
from resilfs.fs import cluster as clusterfile
from resilfs.protocol import HEADER, HEADER_SIZE, REPLY, Op

MODES = ["wrong-length", "wrong-request-id", "garbage", "slow", "closed-mid-reply"]
DATA_OPS = {Op.READ, Op.WRITE, Op.READV, Op.WRITEV}
HEALTHY_TIMEOUT = 60.0
DEADLINE = 30.0


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = sock.recv(n, socket.MSG_WAITALL) if n else b""
    if len(data) != n:
        raise ConnectionError("closed")
    return data


class HostileProxy:
    """Listens on 127.0.0.1; every connection is forwarded to the appliance on ``port``.
    ``arm(mode)``: the next reply frame (any op but the handshake) gets ``mode``;
    ``done`` is set once it did. Threads only; ``close()`` ends every connection."""

    def __init__(self, port: int):
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.mode: str | None = None
        self.ops: set[int] | None = None  # None: any reply
        self.hit: str | None = None  # the op of the reply it spoiled
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, mode: str, ops: set[int] | None = None) -> None:
        with self._lock:
            self.mode, self.ops = mode, ops

    def _take(self, op: int) -> str | None:
        if not op & REPLY or op & ~REPLY in (Op.HELLO, Op.AUTH):
            return None
        with self._lock:
            if self.ops is not None and op & ~REPLY not in self.ops:
                return None
            mode, self.mode = self.mode, None
        if mode is not None:
            self.hit = f"op {op & ~REPLY}"
        return mode

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            self._sockets += [client, upstream]
            closed = threading.Event()
            threading.Thread(target=self._up, args=(client, upstream, closed),
                             daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, closed),
                             daemon=True).start()

    def _up(self, client, upstream, closed) -> None:
        """Client to appliance, byte for byte."""
        try:
            while data := client.recv(1 << 16):
                upstream.sendall(data)
        except OSError:
            pass
        closed.set()
        self._shut(client, upstream)

    def _down(self, upstream, client, closed) -> None:
        """Appliance to client, frame by frame; one frame spoiled when armed."""
        try:
            while True:
                header = recv_exact(upstream, HEADER_SIZE)
                length, version, op, status, request_id = HEADER.unpack(header)
                payload = recv_exact(upstream, length)
                mode = self._take(op)
                if mode is None:
                    client.sendall(header + payload)
                    continue
                if mode == "wrong-length":  # claims 8 bytes more than it sends
                    client.sendall(HEADER.pack(length + 8, version, op, status, request_id)
                                   + payload)
                elif mode == "wrong-request-id":
                    client.sendall(HEADER.pack(length, version, op, status, request_id + 7919)
                                   + payload)
                elif mode == "garbage":
                    client.sendall(os.urandom(HEADER_SIZE + max(length, 64)))
                elif mode == "slow":  # held until the client gives up on it
                    self.done.set()
                    closed.wait(DEADLINE)
                    client.sendall(header + payload)
                elif mode == "closed-mid-reply":
                    client.sendall((header + payload)[:HEADER_SIZE + length // 2])
                    self.done.set()
                    break
                self.done.set()
        except (OSError, ConnectionError):
            pass
        self._shut(client, upstream)

    @staticmethod
    def _shut(*socks) -> None:
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.listener.close()
        self._shut(*self._sockets)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resilfs", *args], capture_output=True,
                          text=True, timeout=120)


def drop_and_read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return os.read(fd, 1 << 24)
    finally:
        os.close(fd)


@pytest.fixture
def hostile(tmp_path):
    """Three appliances (parity:2+1), the third behind a HostileProxy; mounted. Yields
    (proxy, mountpoint, mount log path, mount process)."""
    launcher = ApplianceLauncher(str(tmp_path / "appliances"))
    proxy = None
    mountpoint = None
    process = None
    try:
        apps = launcher.start(3, persist=True, capacity="64M")
        proxy = HostileProxy(apps[2].port)
        cluster = str(tmp_path / "cluster.toml")
        clusterfile.write(cluster, "hostile", "tcp",
                          os.path.relpath(launcher.secret_file, tmp_path),
                          [apps[0].address, apps[1].address, proxy.address])
        r = cli("mkfs", cluster, "--scheme", "parity:2+1", "--set-size", "4M")
        assert r.returncode == 0, r.stderr
        mountpoint = str(tmp_path / "mnt")
        os.mkdir(mountpoint)
        log_path = str(tmp_path / "mount.log")
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "resilfs", "mount", "--foreground", cluster,
                 mountpoint], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + DEADLINE
        while not os.path.ismount(mountpoint):
            assert process.poll() is None and time.monotonic() < deadline, open(log_path).read()
            time.sleep(0.02)
        yield proxy, mountpoint, log_path, process
    finally:
        if mountpoint is not None and os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True, timeout=30)
        if process is not None:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if mountpoint is not None and os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True)
        if proxy is not None:
            proxy.close()
        launcher.close()


def write_synced(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@pytest.mark.parametrize("target", ["any", "data"])
@pytest.mark.parametrize("mode", MODES)
def test_a_hostile_appliance_is_marked_failed_and_the_mount_goes_on(hostile, mode, target):
    proxy, mnt, log_path, process = hostile
    before = {name: os.urandom(100_000 + i) for i, name in enumerate(["a", "b"])}
    for name, data in before.items():
        write_synced(os.path.join(mnt, name), data)
    proxy.arm(mode, DATA_OPS if target == "data" else None)
    after = os.urandom(70_000)
    write_synced(os.path.join(mnt, "c"), after)  # a journal commit: reaches the proxy
    assert proxy.done.wait(DEADLINE), "no reply passed the adversary"
    marked = f"appliance {proxy.address} marked failed"
    deadline = time.monotonic() + DEADLINE
    while marked not in open(log_path).read():
        assert time.monotonic() < deadline, open(log_path).read()[-3000:]
        time.sleep(0.05)
    # the mount goes on: nothing changed, it still writes, nothing turned read-only
    write_synced(os.path.join(mnt, "d"), b"after the fact")
    assert sorted(os.listdir(mnt)) == ["a", "b", "c", "d"]
    for name, data in {**before, "c": after, "d": b"after the fact"}.items():
        assert drop_and_read(os.path.join(mnt, name)) == data, name
    status = json.loads(os.getxattr(mnt, "user.resilfs.status"))
    assert status["read_only"] is False
    assert process.poll() is None
    deadline = time.monotonic() + HEALTHY_TIMEOUT  # the member comes back (resync)
    while any(s["state"] != "healthy" for s in status["sets"]):
        assert time.monotonic() < deadline, status["sets"]
        time.sleep(0.1)
        status = json.loads(os.getxattr(mnt, "user.resilfs.status"))
    r = cli("fsck", "--online", mnt)
    assert r.returncode == 0, r.stdout + r.stderr
    r = cli("scrub", mnt)
    assert r.returncode == 0, r.stdout + r.stderr
