"""The on-appliance format version: shown by ``resilfs status``; a newer one is refused."""
import functools
import json
import os
import zlib

import pytest
import trio

from resilfs.fs import journal_appliance
from resilfs.sets import AppliancePool
from resilfs.transport import connect
from tests.fs.mounting import run_cli

pytestmark = pytest.mark.timeout(120)


async def _replace_superblocks(fs_cluster, value_for) -> list[bytes]:
    """Put ``value_for(old value)`` in place of the superblock on every copy; the old
    values, in copy order."""
    pool = await AppliancePool.create([a.address for a in fs_cluster.apps],
                                      functools.partial(connect, secret=fs_cluster.launcher.secret))
    try:
        old = []
        for index, address in enumerate(pool.addresses[:journal_appliance.COPIES]):
            client = await pool.client(address)
            found = await client.record_get("testfs", journal_appliance.SUPER)
            old.append(found[1])
            await client.record_put("testfs", journal_appliance.SUPER,
                                    value_for(index, found[1]), found[0])
        return old
    finally:
        await pool.aclose()


def _newer_superblock(index: int, old: bytes) -> bytes:
    """What a newer resilfs would leave: a superblock of the next format."""
    body = json.dumps({"format": journal_appliance.FORMAT + 1, "epoch": 99}).encode()
    return journal_appliance.SUPER_MAGIC + zlib.crc32(body).to_bytes(4, "little") + body


def test_status_shows_the_format_and_a_newer_format_is_refused(fs_cluster):
    mnt = fs_cluster.mount().mountpoint
    r = run_cli("status", "--json", mnt)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["format_version"] == journal_appliance.FORMAT
    r = run_cli("status", mnt)
    assert r.returncode == 0 and f"format {journal_appliance.FORMAT}" in r.stdout, r.stdout
    assert fs_cluster.mounts[-1].unmount() == 0

    originals = trio.run(_replace_superblocks, fs_cluster, _newer_superblock)
    refusal = (f"resilfs mount: the metadata on the appliances is in format "
               f"{journal_appliance.FORMAT + 1}; this resilfs reads format "
               f"{journal_appliance.FORMAT} (upgrade resilfs to mount it)")
    r = run_cli("mount", "--foreground", fs_cluster.cluster, mnt)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == refusal, r.stderr  # after the log lines
    assert "Traceback" not in r.stderr
    assert not os.path.ismount(mnt)
    # in the background the reason is in the mount's log
    r = run_cli("mount", fs_cluster.cluster, mnt)
    assert r.returncode == 1 and not os.path.ismount(mnt)
    with open(os.path.join(fs_cluster.workdir, "mount.log")) as f:
        assert refusal.split(": ", 1)[1] in f.read()
    # the refusals changed nothing: with the superblocks put back it mounts, and the
    # final scrub and fsck find the filesystem as it was
    trio.run(_replace_superblocks, fs_cluster, lambda index, _: originals[index])
    fs_cluster.mount()
