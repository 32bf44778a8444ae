"""Beyond tolerance: EIO for the files on the lost set only, the rest readable, read-only."""
import errno
import itertools
import os
import re

import pytest

from tests.fs.conftest import make_cluster

pytestmark = pytest.mark.timeout(300)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping the page cache needs root")
def test_lost_set_gives_eio_and_read_only(tmp_path):
    c = make_cluster(tmp_path, count=6, scheme="mirror:2", capacity="64M",
                     mkfs_args=("--set-size", "1M"))
    try:
        m = c.mount()
        contents = {}
        for i in range(6):  # one file per 1 MiB set: set i+1 holds file i
            contents[f"f{i}"] = os.urandom(1 << 20)
            with open(os.path.join(c.mountpoint, f"f{i}"), "wb") as f:
                f.write(contents[f"f{i}"])
                os.fsync(f.fileno())
        placement = {int(s): set(members.split(", ")) for s, members in re.findall(
            r"created set testfs/data-(\d+): mirror:2, \d+ bytes on (.*)", m.log_tail(200))}
        journal_copies = {a.address for a in c.apps[:3]}
        for lost, kept in itertools.permutations(sorted(placement), 2):
            dead = placement[lost]
            if not dead & placement[kept] and len(journal_copies - dead) >= 2:
                break
        else:
            pytest.skip(f"no placement fits this test: {placement}")
        for app in c.apps:
            if app.address in dead:
                c.launcher.kill(app)
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:  # read from the sets, not the cache
            f.write("3")
        with pytest.raises(OSError) as info:
            open(os.path.join(c.mountpoint, f"f{lost - 1}"), "rb").read()
        assert info.value.errno == errno.EIO
        assert open(os.path.join(c.mountpoint, f"f{kept - 1}"), "rb").read() == \
            contents[f"f{kept - 1}"]
        with pytest.raises(OSError) as info:
            os.mkdir(os.path.join(c.mountpoint, "new"))
        assert info.value.errno == errno.EROFS
        assert sorted(os.listdir(c.mountpoint)) == sorted(contents)
    finally:
        c.close()
        c.launcher.close()
