"""Appliances each in a private network namespace, joined by a bridge, so that one can be
cut off the network (a partition) and joined again: for the fault schedule over tcp.

Appliance ``i`` of this process runs in namespace ``rfs<pid>-<i>`` and listens on
``10.231.X.Y+2+i:7400`` (a /27 per process, derived from the PID: at most ``MAX_APPLIANCES``).
Its veth pair leads to a bridge in a hub namespace of this process, ``rfs<pid>-hub``; one
more veth pair joins the hub to the host, whose end has ``10.231.X.Y+1``. So the mount (on
the host) reaches every appliance, and the appliances reach each other (forwarded writes go
appliance to appliance) without routing or anything else configured on the host. (Before,
each appliance had a /30 to the host and no route beyond it: appliance-to-appliance
connections failed with "Network is unreachable", so every forwarded write marked the
coding members failed, and one injected fault then took an ec:4+2 set beyond its
tolerance.) ``cut(app)`` takes the appliance's end down: packets to and from it, from the
host and from the other appliances alike, are dropped silently, as on a cut cable
(connections hang, then time out); ``heal(app)`` brings it back. Only these namespaces are
touched; ``close()`` stops every appliance by PID and deletes its namespaces (their veths go
with them) and the host's veth. Needs root, ``ip`` and ``nsenter``. The appliances share
the host's mount namespace (see ``_spawn``).

The same interface as ``ApplianceLauncher`` for what the fault schedule uses: ``start``,
``kill``, ``stop``, ``restart``, ``close``, ``secret``, ``secret_file``; appliances with
``address``, ``pid``, ``running``.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from resilfs.auth import write_secret
from resilfs.protocol import HEADER_SIZE

PORT = 7400
START_TIMEOUT = 10.0
MAX_APPLIANCES = 29  # a /27: network, host, 29 appliances, broadcast
BRIDGE = "rfbr"  # inside the hub namespace


def available() -> bool:
    """Whether network namespaces can be made here (root, ``ip`` and ``nsenter``)."""
    if os.geteuid() != 0 or shutil.which("nsenter") is None:
        return False
    try:
        return subprocess.run(["ip", "netns", "list"], capture_output=True).returncode == 0
    except OSError:
        return False


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class NetnsAppliance:
    index: int
    netns: str
    hub_if: str  # its veth's end in the hub namespace, on the bridge
    ns_if: str
    ns_ip: str
    args: list
    log_path: str
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"{self.ns_ip}:{PORT}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class NetnsAppliances:
    def __init__(self, workdir: str):
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.secret_file = os.path.join(workdir, "secret")
        self.secret = write_secret(self.secret_file)
        self.appliances: list[NetnsAppliance] = []
        self.hub: str | None = None  # the hub namespace, made by the first start()
        self.host_if: str | None = None
        self.net: str | None = None

    def _hub(self) -> None:
        """The hub namespace with its bridge, and the host's veth into it (once)."""
        if self.hub is not None:
            return
        pid = os.getpid()
        j = (pid % 2000) * 32
        self.net = f"10.231.{j // 256}.{j % 256}"
        self.hub = f"rfs{pid}-hub"
        self.host_if = f"rfh{pid % 100000}"
        host_ip = f"10.231.{j // 256}.{j % 256 + 1}"
        _ip("netns", "add", self.hub)
        _ip("-n", self.hub, "link", "add", BRIDGE, "type", "bridge")
        _ip("-n", self.hub, "link", "set", BRIDGE, "up")
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", "up0", "netns",
            self.hub)
        _ip("-n", self.hub, "link", "set", "up0", "master", BRIDGE)
        _ip("-n", self.hub, "link", "set", "up0", "up")
        _ip("addr", "add", f"{host_ip}/27", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")

    def start(self, count: int, *, capacity: str, persist: bool = True) -> list:
        if len(self.appliances) + count > MAX_APPLIANCES:
            raise ValueError(f"at most {MAX_APPLIANCES} appliances in network namespaces")
        self._hub()
        for _ in range(count):
            i = len(self.appliances)
            base, last = self.net.rsplit(".", 1)
            app = NetnsAppliance(
                i, f"rfs{os.getpid()}-{i}", f"a{i}", "eth0", f"{base}.{int(last) + 2 + i}",
                ["--capacity", capacity, "--secret-file", self.secret_file,
                 *(["--persist-dir", os.path.join(self.workdir, f"appliance-{i}")]
                   if persist else [])],
                os.path.join(self.workdir, f"appliance-{i}.log"))
            self.appliances.append(app)
            _ip("netns", "add", app.netns)
            _ip("-n", self.hub, "link", "add", app.hub_if, "type", "veth", "peer", "name",
                app.ns_if, "netns", app.netns)
            _ip("-n", self.hub, "link", "set", app.hub_if, "master", BRIDGE)
            _ip("-n", self.hub, "link", "set", app.hub_if, "up")
            _ip("-n", app.netns, "addr", "add", f"{app.ns_ip}/27", "dev", app.ns_if)
            _ip("-n", app.netns, "link", "set", app.ns_if, "up")
            _ip("-n", app.netns, "link", "set", "lo", "up")
            self._spawn(app)
        return list(self.appliances)

    def _spawn(self, app: NetnsAppliance) -> None:
        with open(app.log_path, "ab") as log:
            app.process = subprocess.Popen(
                # nsenter joins the network namespace only; ``ip netns exec`` would also
                # make a mount namespace holding a copy of every mount of the host, and a
                # FUSE mount copied so lives on after its umount: its daemon never exits
                ["nsenter", f"--net=/run/netns/{app.netns}", sys.executable, "-m",
                 "resilfs", "appliance", "--listen", app.address, *app.args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if not app.running:
                raise RuntimeError(f"appliance {app.index} in {app.netns} exited with "
                                   f"{app.process.returncode}")
            try:
                with socket.create_connection((app.ns_ip, PORT), timeout=1.0) as s:
                    if len(s.recv(HEADER_SIZE, socket.MSG_WAITALL)) == HEADER_SIZE:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"appliance {app.index} in {app.netns} did not start")
            time.sleep(0.05)

    def kill(self, app: NetnsAppliance) -> None:
        if app.running:
            app.process.kill()
        app.process.wait()

    def stop(self, app: NetnsAppliance, timeout: float = 10.0) -> None:
        if app.running:
            app.process.send_signal(signal.SIGTERM)
            try:
                app.process.wait(timeout)
            except subprocess.TimeoutExpired:
                app.process.kill()
        app.process.wait()

    def restart(self, app: NetnsAppliance) -> None:
        self.stop(app)
        self._spawn(app)

    def cut(self, app: NetnsAppliance) -> None:
        _ip("-n", app.netns, "link", "set", app.ns_if, "down")

    def heal(self, app: NetnsAppliance) -> None:
        _ip("-n", app.netns, "link", "set", app.ns_if, "up")

    def close(self) -> None:
        for app in self.appliances:
            if app.process is not None:
                if app.running:
                    os.kill(app.pid, signal.SIGCONT)
                self.stop(app)
            subprocess.run(["ip", "netns", "del", app.netns], capture_output=True)
        self.appliances = []
        if self.hub is not None:
            subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
            subprocess.run(["ip", "netns", "del", self.hub], capture_output=True)
            self.hub = None
