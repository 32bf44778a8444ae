"""Random sequences of file operations on a real mount, compared byte for byte with a model.

write, read, truncate, mmap write, mmap read, rename, fsync and remount, on one mount over
three appliance processes (mirror:2, tcp); the model is a bytearray.
"""
import mmap
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fs.conftest import make_cluster

pytestmark = pytest.mark.timeout(600)

MAX = 3 * 1024 * 1024 + 1234

op = st.one_of(
    st.tuples(st.just("write"), st.integers(0, MAX), st.integers(1, 300_000)),
    st.tuples(st.just("read"), st.integers(0, MAX), st.integers(1, 2_000_000)),
    st.tuples(st.just("truncate"), st.integers(0, MAX), st.just(0)),
    st.tuples(st.just("mmap_write"), st.integers(0, MAX), st.integers(1, 100_000)),
    st.tuples(st.just("mmap_read"), st.integers(0, MAX), st.integers(1, 100_000)),
    st.tuples(st.just("rename"), st.just(0), st.just(0)),
    st.tuples(st.just("fsync"), st.just(0), st.just(0)),
    st.tuples(st.just("remount"), st.just(0), st.just(0)),
)


@pytest.fixture(scope="module")
def model_cluster(tmp_path_factory):
    c = make_cluster(tmp_path_factory.mktemp("model"))
    try:
        c.mount()
        yield c
    finally:
        c.close()
        c.launcher.close()


def test_random_operations_match_model(model_cluster):
    counter = iter(range(1_000_000))

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(op, min_size=1, max_size=25), st.randoms(use_true_random=False))
    def run(ops, rnd):
        c = model_cluster
        path = os.path.join(c.mountpoint, f"file{next(counter)}")
        model = bytearray()
        fd = os.open(path, os.O_CREAT | os.O_RDWR)
        try:
            for kind, a, b in ops:
                if kind == "write":
                    data = rnd.randbytes(b)
                    os.pwrite(fd, data, a)
                    if a > len(model):
                        model.extend(bytes(a - len(model)))
                    model[a:a + b] = data
                elif kind == "read":
                    assert os.pread(fd, b, a) == bytes(model[a:a + b]), (kind, a, b)
                elif kind == "truncate":
                    os.ftruncate(fd, a)
                    del model[a:]
                    model.extend(bytes(a - len(model)))
                elif kind in ("mmap_write", "mmap_read") and model:
                    a %= len(model)
                    b = min(b, len(model) - a)
                    with mmap.mmap(fd, len(model)) as m:
                        if kind == "mmap_write":
                            data = rnd.randbytes(b)
                            m[a:a + b] = data
                            model[a:a + b] = data
                            m.flush()
                        else:
                            assert m[a:a + b] == bytes(model[a:a + b]), (kind, a, b)
                elif kind == "rename":
                    new = path + "r"
                    os.rename(path, new)
                    path = new
                elif kind == "fsync":
                    os.fsync(fd)
                elif kind == "remount":
                    os.close(fd)
                    fd = -1
                    c.remount()
                    fd = os.open(path, os.O_RDWR)
                assert os.fstat(fd).st_size == len(model)
            os.lseek(fd, 0, os.SEEK_SET)
            with open(path, "rb") as f:
                assert f.read() == bytes(model)
        finally:
            if fd >= 0:
                os.close(fd)
        os.unlink(path)

    run()
