"""resilfs up / down: local appliances, mkfs and mount in one command, and back."""
import json
import os
import signal
import subprocess
import tempfile

import pytest

from resilfs.fs import embedded
from tests.fs.mounting import run_cli

pytestmark = pytest.mark.timeout(180)


def test_up_write_down():
    mnt = tempfile.mkdtemp(prefix="resilfs-up-")
    try:
        r = run_cli("up", mnt, "--scheme", "parity:2+1", "--capacity", "128M")
        assert r.returncode == 0, r.stderr
        info = embedded.load(mnt)
        assert len(info["appliances"]) == 4 and all(embedded.alive(a["pid"])
                                                    for a in info["appliances"])
        data = os.urandom(3 << 20)
        open(os.path.join(mnt, "f"), "wb").write(data)
        assert open(os.path.join(mnt, "f"), "rb").read() == data
        r = run_cli("up", mnt)
        assert r.returncode == 1 and "already mounted" in r.stderr
        r = run_cli("status", "--json", mnt)
        assert r.returncode == 0, r.stderr
        status = json.loads(r.stdout)
        assert {a["pid"] for a in status["appliances"]} == {a["pid"] for a in info["appliances"]}
        assert [s["state"] for s in status["sets"]] == ["healthy"]
        assert run_cli("status", mnt).returncode == 0
        r = run_cli("scrub", mnt)
        assert r.returncode == 0 and "0 mismatched" in r.stdout, r.stdout + r.stderr
        r = run_cli("down", mnt)
        assert r.returncode == 0, r.stderr
        assert not os.path.ismount(mnt) and embedded.load(mnt) is None
        assert not any(embedded.alive(a["pid"]) for a in info["appliances"])
        assert not embedded.alive(info["mount_pid"])
    finally:
        info = embedded.load(mnt)
        subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
        if info:
            for pid in [info["mount_pid"]] + [a["pid"] for a in info["appliances"]]:
                if embedded.alive(pid):
                    os.kill(pid, signal.SIGKILL)
            subprocess.run(["rm", "-rf", embedded.state_dir(mnt)])
        os.rmdir(mnt)
