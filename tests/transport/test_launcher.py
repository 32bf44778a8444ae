"""The launcher starts, kills, restarts and stops appliances and cleans up after itself."""
import os

import pytest

from resilfs.appliance.launcher import ApplianceLauncher, LauncherError
from resilfs.transport import connect


async def test_start_kill_restart(launcher):
    apps = launcher.start(2, persist=True)
    assert len({a.port for a in apps}) == 2
    client = await connect(apps[0].address, secret=launcher.secret)
    region = await client.alloc(4096, "fs")
    await client.write(region, 0, b"kept")
    await client.aclose()
    launcher.kill(apps[0])
    assert not apps[0].running
    launcher.restart(apps[0])
    async with await connect(apps[0].address, secret=launcher.secret) as client:
        assert bytes(await client.read(region, 0, 4)) == b"kept"
    assert launcher.stop(apps[1]) == 0


def test_close_stops_everything(tmp_path):
    with ApplianceLauncher(tmp_path) as launcher:
        apps = launcher.start(2)
        pids = [a.pid for a in apps]
    for app, pid in zip(apps, pids, strict=True):
        assert not app.running
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_start_failure_reports_the_log(tmp_path):
    with ApplianceLauncher(tmp_path) as launcher:
        with pytest.raises(LauncherError, match="capacity"):
            launcher.start(1, capacity="nonsense")
