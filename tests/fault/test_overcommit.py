"""An appliance whose capacity is more than its persist dir can hold refuses allocations
with NoSpace; it is never killed by SIGBUS at a write into a region it lent."""
import os
import subprocess

import pytest

from resilfs.transport import connect
from resilfs.transport.base import NoSpace
from tests import appliances

launcher = appliances.launcher  # fixture

MiB = 1 << 20


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
async def test_overcommitted_capacity_gives_enospc_not_sigbus(launcher, tmp_path):
    shm = tmp_path / "shm"
    shm.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16M", "tmpfs", str(shm)], check=True)
    app = None
    try:
        app = launcher.start(1, persist=True, persist_root=str(shm), capacity="64M")[0]
        client = await connect(app.address, secret=launcher.secret)
        chunk = os.urandom(MiB)
        with pytest.raises(NoSpace):
            region = await client.alloc(32 * MiB, "overcommit")
            for i in range(32):  # before: SIGBUS killed the appliance here
                await client.write(region, i * MiB, chunk)
        region = await client.alloc(8 * MiB, "overcommit")  # what fits still works
        for i in range(8):
            await client.write(region, i * MiB, chunk)
        buffer = bytearray(MiB)
        await client.read_into(region, 7 * MiB, buffer)
        assert buffer == chunk
        await client.aclose()
        assert app.running
    finally:
        if app is not None:
            launcher.stop(app)
        subprocess.run(["umount", "-l", str(shm)], check=False)
