"""Every relationship and transport under a mount; an appliance killed under writes."""
import hashlib
import os
import threading

import pytest

from tests.fs.conftest import make_cluster

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("scheme,count,transport,codec", [
    ("mirror:2", 3, "shm", "mirror"), ("parity:2+1", 3, "tcp", "xor"),
    ("ec:4+2", 6, "shm", "isal"), ("ec:4+2", 6, "tcp", "zfec")])
def test_data_roundtrip_and_remount(tmp_path, scheme, count, transport, codec):
    c = make_cluster(tmp_path, count=count, scheme=scheme, transport=transport,
                     capacity="256M", mkfs_args=("--set-size", "64M", "--codec", codec))
    try:
        c.mount()
        files = {f"f{i}": os.urandom(n) for i, n in enumerate((0, 1, 4095, 4097, 300_000,
                                                                 5 << 20))}
        for name, data in files.items():
            with open(os.path.join(c.mountpoint, name), "wb") as f:
                f.write(data)
        for name, data in files.items():
            assert open(os.path.join(c.mountpoint, name), "rb").read() == data
        c.remount()
        for name, data in files.items():
            assert open(os.path.join(c.mountpoint, name), "rb").read() == data
    finally:
        c.close()
        c.launcher.close()


def test_appliance_killed_during_writes(tmp_path):
    """mirror:2 on three appliances: a SIGKILL of one gives no application error."""
    c = make_cluster(tmp_path, count=3, scheme="mirror:2")
    try:
        c.mount()
        digests, errors = {}, []

        def writer():
            try:
                for i in range(40):
                    data = os.urandom(256 * 1024)
                    path = os.path.join(c.mountpoint, f"w{i}")
                    with open(path, "wb") as f:
                        f.write(data)
                        os.fsync(f.fileno())
                    digests[path] = hashlib.sha256(data).hexdigest()
            except OSError as exc:
                errors.append(exc)

        t = threading.Thread(target=writer)
        t.start()
        while len(digests) < 10 and t.is_alive():
            t.join(0.01)
        c.launcher.kill(c.apps[0])
        t.join(120)
        assert not t.is_alive() and not errors, errors
        for path, digest in digests.items():
            assert hashlib.sha256(open(path, "rb").read()).hexdigest() == digest
    finally:
        c.close()
        c.launcher.close()


def test_rebuild_after_appliance_kill_shows_in_status(tmp_path):
    """A killed member is replaced by a spare appliance in the background; data stays intact."""
    import json
    import time

    from tests.fs.mounting import run_cli
    c = make_cluster(tmp_path, count=3, scheme="mirror:2", capacity="128M",
                     mkfs_args=("--set-size", "32M"))
    try:
        c.mount()
        data = os.urandom(20 << 20)
        path = os.path.join(c.mountpoint, "f")
        with open(path, "wb") as f:
            f.write(data)
            os.fsync(f.fileno())
        status = json.loads(run_cli("status", "--json", c.mountpoint).stdout)
        members = status["sets"][0]["members"]
        victim = next(a for a in c.apps if a.address == members[1])
        c.launcher.kill(victim)
        deadline = time.monotonic() + 90
        states = []
        while time.monotonic() < deadline:
            s = json.loads(run_cli("status", "--json", c.mountpoint).stdout)["sets"][0]
            states.append(s["state"])
            if s["state"] == "healthy" and victim.address not in s["members"]:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"no rebuild onto the spare: {states[-5:]}")
        assert hashlib.sha256(open(path, "rb").read()).digest() == \
            hashlib.sha256(data).digest()
        r = run_cli("scrub", c.mountpoint)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        c.close()
        c.launcher.close()
