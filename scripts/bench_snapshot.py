"""Snapshot time beside ``cp --reflink=never`` of the same data, on the same mount.

Three local appliances (shm transport, ``--scheme``, default mirror:2), one mount. A
mirror:2 set is snapshotted by cloning its members inside the appliances (its live data
never drops to one copy); a mirror:3 set by splitting a member off. For files of 16 MiB,
256 MiB and 1 GiB, and a tree of 10,000 small files: time ``setxattr user.resilfs.snapshot``
(the kernel's dirty pages are flushed before each, outside the timing, as they would be
by the snapshot itself) and time ``cp --reflink=never`` (``cp -r`` for the tree) followed
by ``sync`` of the copy, so both are durable. Each snapshot is taken ``--repeat`` times
(each deleted again and the sets left to become healthy before the next); the median
counts, and the samples are printed too: a single call of a few ms on a shared machine is
at the mercy of the scheduler. Bars: the snapshot is <= 0.05x of the copy for the largest
file; for split sets (mirror:3 and more) its time does not grow with file size (largest
within 2x of 16 MiB; a clone copies memory, so its time does). Prints a table and, last,
one JSON line. Usage: bench_snapshot.py [--quick] [--files N] [--repeat N] [--scheme S]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial

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


def snapshot_and_copy(mnt: str, src: str, name: str, recursive: bool,
                      repeat: int) -> dict:
    samples = []
    for k in range(repeat):
        os.sync()  # nothing dirty: time the snapshot itself
        wait_healthy(mnt)
        label = f"{name}-{k}".encode()
        samples.append(timed(partial(os.setxattr, src, SNAP, label)))
        os.setxattr(mnt, DELETE, label)  # the regions back before the copy
    wait_healthy(mnt)
    dst = os.path.join(mnt, name + ".copy")
    args = ["cp", "--reflink=never", *(["-r"] if recursive else []), src, dst]
    copy = timed(lambda: (subprocess.run(args, check=True),
                          subprocess.run(["sync", "-f", dst], check=True)))
    subprocess.run(["rm", "-rf", dst], check=True)
    return {"snapshot_s": statistics.median(samples), "snapshot_samples_s": samples,
            "copy_s": copy}


def main(args=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="16 and 64 MiB files, 1000 files")
    p.add_argument("--files", type=int, default=None, help="files in the tree")
    p.add_argument("--repeat", type=int, default=5, help="snapshots per size (median)")
    p.add_argument("--log", help="keep the mount's log here")
    p.add_argument("--scheme", default="mirror:2", help="mirror:N (default mirror:2)")
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
            cli("mkfs", cluster, "--scheme", opts.scheme)
            cli("mount", cluster, mnt)
            try:
                for size in sizes:
                    src = os.path.join(mnt, f"file-{size // MiB}M")
                    write_file(src, size)
                    results[f"file {size // MiB} MiB"] = snapshot_and_copy(
                        mnt, src, f"s{size // MiB}", False, opts.repeat)
                tree = os.path.join(mnt, "tree")
                os.mkdir(tree)
                payload = os.urandom(1024)
                for i in range(nfiles):
                    sub = os.path.join(tree, f"d{i // 1000:02d}")
                    if i % 1000 == 0:
                        os.mkdir(sub)
                    with open(os.path.join(sub, f"f{i:05d}"), "wb") as f:
                        f.write(payload)
                results[f"tree {nfiles} files"] = snapshot_and_copy(mnt, tree, "tree", True,
                                                                    opts.repeat)
            finally:
                cli("umount", mnt)
                if opts.log:
                    subprocess.run(["cp", os.path.join(work, "mount.log"), opts.log])
    print(f"{'what':<22} {'snapshot':>10} {'cp':>10} {'ratio':>8}  snapshot samples (ms)")
    for what, r in results.items():
        r["ratio"] = r["snapshot_s"] / r["copy_s"]
        samples = " ".join(f"{t * 1000:.1f}" for t in r["snapshot_samples_s"])
        print(f"{what:<22} {r['snapshot_s'] * 1000:>8.1f}ms {r['copy_s'] * 1000:>8.1f}ms "
              f"{r['ratio']:>8.4f}  {samples}")
    small, big = f"file {sizes[0] // MiB} MiB", f"file {sizes[-1] // MiB} MiB"
    bars = {"largest <= 0.05x of its copy": results[big]["ratio"] <= 0.05}
    if opts.scheme.startswith("mirror:") and int(opts.scheme.split(":")[1]) >= 3:  # splits
        bars["size-independent (largest within 2x of 16 MiB)"] = \
            results[big]["snapshot_s"] <= 2 * results[small]["snapshot_s"]
    for bar, ok in bars.items():
        print(f"bar {bar}: {'met' if ok else 'MISSED'}")
    print(json.dumps({"scheme": opts.scheme, "results": results, "bars": bars}))
    return 0 if all(bars.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
