"""Beyond tolerance: EIO for the files on the lost set only, the rest readable, read-only."""
import errno
import os

import pytest

from tests.fs.conftest import lose_one_set

pytestmark = pytest.mark.timeout(300)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping the page cache needs root")
def test_lost_set_gives_eio_and_read_only(tmp_path):
    c, _m, contents, lost, kept = lose_one_set(tmp_path)
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:  # read from the sets, not the cache
            f.write("3")
        with pytest.raises(OSError) as info:
            open(os.path.join(c.mountpoint, lost), "rb").read()
        assert info.value.errno == errno.EIO
        assert open(os.path.join(c.mountpoint, kept), "rb").read() == contents[kept]
        with pytest.raises(OSError) as info:
            os.mkdir(os.path.join(c.mountpoint, "new"))
        assert info.value.errno == errno.EROFS
        assert sorted(os.listdir(c.mountpoint)) == sorted(contents)
    finally:
        c.close()
        c.launcher.close()
