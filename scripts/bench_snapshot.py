"""Snapshot time beside ``cp --reflink=never`` of the same data, on the same mount.

Three local appliances (shm transport, mirror:2), one mount. For files of 16 MiB, 256 MiB
and 1 GiB, and a tree of 10,000 small files: time ``setxattr user.resilfs.snapshot``
(the kernel's dirty pages are flushed before each, outside the timing, as they would be
by the snapshot itself) and time ``cp --reflink=never`` (``cp -r`` for the tree) followed
by ``sync`` of the copy, so both are durable. Bars (mirror sets): snapshot time does not
grow with file size (1 GiB within 2x of 16 MiB) and is <= 0.05x of the copy for 1 GiB.
Prints a table and, last, one JSON line. Usage: bench_snapshot.py [--quick] [--files N]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from resilfs.appliance.launcher import ApplianceLauncher
from resilfs.fs import cluster as clusterfile

MiB = 1 << 20
SNAP = "user.resilfs.snapshot"
DELETE = "user.resilfs.snapshot.delete"


def cli(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "resilfs", *args], capture_output=True,
                       text=True, timeout=120)
    if r.returncode != 0:
        raise SystemExit(f"resilfs {' '.join(args)} failed: {r.stderr.strip()}")


def write_file(path: str, size: int) -> None:
    block = os.urandom(4 * MiB)
    with open(path, "wb") as f:
        for offset in range(0, size, len(block)):
            f.write(block[:min(len(block), size - offset)])
        os.fsync(f.fileno())


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def wait_healthy(mnt: str, timeout: float = 300.0) -> None:
    """Until every set is healthy: the previous snapshot's rebuild is done (a set still
    rebuilding is snapshotted by cloning, which is not what is measured here)."""
    deadline = time.monotonic() + timeout
    while any(s["state"] != "healthy" for s in
              json.loads(os.getxattr(mnt, "user.resilfs.status"))["sets"]):
        if time.monotonic() > deadline:
            raise SystemExit("sets did not become healthy in time")
        time.sleep(0.2)


def snapshot_and_copy(mnt: str, src: str, name: str, recursive: bool) -> tuple[float, float]:
    os.sync()  # nothing dirty: time the snapshot itself
    wait_healthy(mnt)
    snap = timed(lambda: os.setxattr(src, SNAP, name.encode()))
    os.setxattr(mnt, DELETE, name.encode())  # give the regions back before the copy
    wait_healthy(mnt)
    dst = os.path.join(mnt, name + ".copy")
    args = ["cp", "--reflink=never", *(["-r"] if recursive else []), src, dst]
    copy = timed(lambda: (subprocess.run(args, check=True),
                          subprocess.run(["sync", "-f", dst], check=True)))
    subprocess.run(["rm", "-rf", dst], check=True)
    return snap, copy


def main(args=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="16 and 64 MiB files, 1000 files")
    p.add_argument("--files", type=int, default=None, help="files in the tree")
    p.add_argument("--log", help="keep the mount's log here")
    opts = p.parse_args(args)
    sizes = [16 * MiB, 64 * MiB] if opts.quick else [16 * MiB, 256 * MiB, 1024 * MiB]
    nfiles = opts.files or (1000 if opts.quick else 10_000)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-snapshot-") as work:
        mnt = os.path.join(work, "mnt")
        os.mkdir(mnt)
        with ApplianceLauncher(os.path.join(work, "appliances")) as launcher:
            apps = launcher.start(3, capacity="6G")
            cluster = os.path.join(work, "cluster.toml")
            clusterfile.write(cluster, "benchfs", "shm",
                              os.path.relpath(launcher.secret_file, work),
                              [a.address for a in apps])
            cli("mkfs", cluster, "--scheme", "mirror:2")
            cli("mount", cluster, mnt)
            try:
                for size in sizes:
                    src = os.path.join(mnt, f"file-{size // MiB}M")
                    write_file(src, size)
                    snap, copy = snapshot_and_copy(mnt, src, f"s{size // MiB}", False)
                    results[f"file {size // MiB} MiB"] = {"snapshot_s": snap, "copy_s": copy}
                tree = os.path.join(mnt, "tree")
                os.mkdir(tree)
                payload = os.urandom(1024)
                for i in range(nfiles):
                    sub = os.path.join(tree, f"d{i // 1000:02d}")
                    if i % 1000 == 0:
                        os.mkdir(sub)
                    with open(os.path.join(sub, f"f{i:05d}"), "wb") as f:
                        f.write(payload)
                snap, copy = snapshot_and_copy(mnt, tree, "tree", True)
                results[f"tree {nfiles} files"] = {"snapshot_s": snap, "copy_s": copy}
            finally:
                cli("umount", mnt)
                if opts.log:
                    subprocess.run(["cp", os.path.join(work, "mount.log"), opts.log])
    print(f"{'what':<22} {'snapshot':>10} {'cp':>10} {'ratio':>8}")
    for what, r in results.items():
        r["ratio"] = r["snapshot_s"] / r["copy_s"]
        print(f"{what:<22} {r['snapshot_s'] * 1000:>8.1f}ms {r['copy_s'] * 1000:>8.1f}ms "
              f"{r['ratio']:>8.4f}")
    small, big = f"file {sizes[0] // MiB} MiB", f"file {sizes[-1] // MiB} MiB"
    bars = {
        "size-independent (largest within 2x of 16 MiB)":
            results[big]["snapshot_s"] <= 2 * results[small]["snapshot_s"],
        "largest <= 0.05x of its copy": results[big]["ratio"] <= 0.05,
    }
    for bar, ok in bars.items():
        print(f"bar {bar}: {'met' if ok else 'MISSED'}")
    print(json.dumps({"results": results, "bars": bars}))
    return 0 if all(bars.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
