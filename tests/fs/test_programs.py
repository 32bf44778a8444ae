"""Real programs on a real mount: sqlite3 (WAL, rollback), git clone + fsck, tar, np.memmap."""
import os
import subprocess
import tarfile

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(300)


def run(*cmd, cwd=None, input=None):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=240, input=input)
    assert r.returncode == 0, f"{cmd}: {r.stderr[-2000:]}"
    return r.stdout


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_sqlite(mnt, journal_mode):
    db = os.path.join(mnt, f"{journal_mode}.db")
    script = (f"PRAGMA journal_mode={journal_mode};\n"
              "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);\n"
              "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<20000)\n"
              "INSERT INTO t(v) SELECT hex(randomblob(50)) FROM c;\n"
              "CREATE INDEX iv ON t(v);\n"
              "DELETE FROM t WHERE id % 3 = 0;\n"
              "VACUUM;\n")
    run("sqlite3", db, input=script)
    out = run("sqlite3", db, input="PRAGMA integrity_check; SELECT count(*) FROM t;")
    assert out.split() == ["ok", str(20000 - 20000 // 3)]


def test_git_clone_and_fsck(mnt, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    run("git", "init", "-q", str(src))
    for i in range(30):
        (src / f"file{i}.txt").write_text(f"content {i}\n" * (i * 50 + 1))
        run("git", "-C", str(src), "add", ".")
        run("git", "-C", str(src), "-c", "user.email=t@t", "-c", "user.name=t", "commit",
            "-qm", f"commit {i}")
    dst = os.path.join(mnt, "clone")
    run("git", "clone", "-q", "--no-local", str(src), dst)
    run("git", "-C", dst, "fsck", "--full", "--strict")
    assert run("git", "-C", dst, "log", "--oneline").count("\n") == 30


def test_tar_extract_and_compare(mnt, tmp_path):
    tree = tmp_path / "tree"
    for d in range(5):
        (tree / f"d{d}" / "sub").mkdir(parents=True)
        for f in range(40):
            (tree / f"d{d}" / "sub" / f"f{f}").write_bytes(os.urandom(f * 997))
        os.symlink("sub/f1", tree / f"d{d}" / "link")
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as t:
        t.add(tree, arcname="tree")
    run("tar", "-xf", str(archive), "-C", mnt)
    run("diff", "-r", "--no-dereference", str(tree), os.path.join(mnt, "tree"))


def test_numpy_memmap(mnt):
    path = os.path.join(mnt, "array.npy")
    a = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(512, 1024))
    a[:] = np.arange(512 * 1024, dtype=np.float64).reshape(512, 1024)
    a.flush()
    del a
    b = np.load(path, mmap_mode="r+")
    assert b[511, 1023] == 512 * 1024 - 1
    b[100:200] = -1
    b.flush()
    del b
    c = np.load(path)
    assert (c[100:200] == -1).all() and c[300, 5] == 300 * 1024 + 5
