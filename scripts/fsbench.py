#!/usr/bin/env python3
"""The driver of scripts/bench_fs.sh (see there): mounts each target, runs fio, reports.

Every mount it makes is unmounted and every process it starts is stopped (by PID) when it
is done with a target, also on errors and Ctrl-C.
"""
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from resilfs.appliance.launcher import ApplianceLauncher  # noqa: E402
from resilfs.cli.mounted import Mounted, run_cli, write_cluster  # noqa: E402

REPEAT = int(os.environ.get("REPEAT", "3"))
SEQ_SIZE = os.environ.get("SEQ_SIZE", "256M")
RAND_SIZE = os.environ.get("RAND_SIZE", "64M")
RUNTIME = os.environ.get("RUNTIME", "5")
ALL_TARGETS = ["tmpfs", "baseline", "mirror2-shm", "mirror2-tcp", "ec42-shm", "ec42-tcp"]
TARGETS = [t for t in os.environ.get("TARGETS", ",".join(ALL_TARGETS)).split(",") if t]
RESILFS = {"mirror2": ("mirror:2", 3), "mirror3": ("mirror:3", 3), "ec42": ("ec:4+2", 6)}
JOBS = [  # name, unit, fio arguments
    ("seq write 1M", "MiB/s", ["--name=seqw", "--rw=write", "--bs=1M", f"--size={SEQ_SIZE}",
                               "--end_fsync=1", "--filename=seq"]),
    ("seq read 1M", "MiB/s", ["--name=seqr", "--rw=read", "--bs=1M", f"--size={SEQ_SIZE}",
                              "--filename=seq"]),
    ("rand write 4k", "IOPS", ["--name=randw", "--rw=randwrite", "--bs=4k",
                               f"--size={RAND_SIZE}", "--time_based", f"--runtime={RUNTIME}",
                               "--end_fsync=1", "--filename=rnd"]),
    ("rand read 4k", "IOPS", ["--name=randr", "--rw=randread", "--bs=4k", f"--size={RAND_SIZE}",
                              "--time_based", f"--runtime={RUNTIME}", "--filename=rnd"]),
    ("create 10k", "files/s", ["--name=create", "--ioengine=filecreate", "--nrfiles=10000",
                               "--filesize=4k", "--bs=4k", "--openfiles=1",
                               "--create_on_open=1", "--directory=meta"]),
    ("stat 10k", "files/s", ["--name=stat", "--ioengine=filestat", "--nrfiles=10000",
                             "--filesize=4k", "--bs=4k", "--openfiles=1", "--directory=meta"]),
    ("unlink 10k", "files/s", ["--name=unlink", "--ioengine=filedelete", "--nrfiles=10000",
                               "--filesize=4k", "--bs=4k", "--openfiles=1",
                               "--directory=meta"]),
]


def drop_caches() -> None:
    subprocess.run(["sync"], check=False)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
    except OSError:
        print("warning: cannot drop caches (not root?): reads may come from the page cache",
              file=sys.stderr)


def fio(directory: str, args: list[str]) -> float:
    """Run one fio job in ``directory``; MiB/s for 1M jobs, IOPS otherwise."""
    args = [a.replace("--directory=meta", f"--directory={directory}/meta") for a in args]
    if not any(a.startswith("--directory") for a in args):
        args.append(f"--directory={directory}")
    os.makedirs(os.path.join(directory, "meta"), exist_ok=True)
    if "--rw=read" in args or "--rw=randread" in args:
        drop_caches()
    cmd = ["fio", "--output-format=json", "--ioengine=psync", "--iodepth=1", "--direct=0",
           *args]
    # cwd matters: fio polls files in its working directory, which is slow on some
    # filesystems (on /work here it cut tmpfs random reads from ~1M to ~14k IOPS)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=directory)
    if out.returncode:
        raise RuntimeError(f"fio failed: {' '.join(cmd)}\n{out.stderr[-2000:]}")
    job = json.loads(out.stdout[out.stdout.index("{"):])["jobs"][0]
    side = max(("read", "write"), key=lambda s: job[s]["total_ios"])
    if "--bs=1M" in args:
        return job[side]["bw_bytes"] / (1 << 20)
    return job[side]["iops"]


def wait_mounted(path: str, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(path):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not mount")
        time.sleep(0.02)


@contextlib.contextmanager
def target(name: str, work: str):
    """Yield a directory on the named target; unmount and stop everything afterwards."""
    mnt = os.path.join(work, "mnt")
    os.makedirs(mnt, exist_ok=True)
    if name == "tmpfs":
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2G", "tmpfs", mnt], check=True)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", mnt], check=False)
        return
    if name in ("baseline", "baseline-xattrs"):
        proc = subprocess.Popen([sys.executable, "scripts/baseline_ramfs.py",
                                 *(["--xattrs"] if name == "baseline-xattrs" else []), mnt])
        try:
            wait_mounted(mnt, proc)
            yield mnt
        finally:
            subprocess.run(["fusermount3", "-u", mnt], check=False)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            subprocess.run(["fusermount3", "-u", "-z", mnt], check=False, capture_output=True)
        return
    layout, transport = name.split("-")
    scheme, count = RESILFS[layout]
    with ApplianceLauncher(os.path.join(work, "appliances")) as launcher:
        apps = launcher.start(count, capacity="2G")
        cluster = write_cluster(work, launcher, apps, transport=transport, name="bench")
        r = run_cli("mkfs", cluster, "--scheme", scheme)
        if r.returncode:
            raise RuntimeError(r.stderr)
        m = Mounted(cluster, mnt, os.path.join(work, "mount.log"))
        try:
            m.start()
            yield mnt
        finally:
            m.stop()


def main() -> int:
    results: dict[str, dict[str, float]] = {}
    for name in TARGETS:
        work = tempfile.mkdtemp(prefix=f"bench-fs-{name}-")
        try:
            with target(name, work) as directory:
                runs: dict[str, list[float]] = {job: [] for job, _, _ in JOBS}
                for _ in range(REPEAT):
                    for job, _, args in JOBS:
                        runs[job].append(fio(directory, args))
                    for entry in os.listdir(directory):
                        path = os.path.join(directory, entry)
                        shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
                results[name] = {job: statistics.median(v) for job, v in runs.items()}
                print(f"{name}: " + ", ".join(f"{j} {v:.0f}" for j, v in results[name].items()),
                      file=sys.stderr)
        except Exception as exc:  # one target failing must not hide the others
            print(f"{name}: FAILED: {exc}", file=sys.stderr)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    report(results)
    return 0 if len(results) == len(TARGETS) else 1


def report(results: dict[str, dict[str, float]]) -> None:
    names = [n for n in TARGETS if n in results]
    base = results.get("baseline", {})
    print(f"\nfio, buffered, psync, iodepth 1; medians of {REPEAT}; (x) = ratio to the bare "
          f"pyfuse3 baseline")
    print(f"{'job':<15}{'unit':<9}" + "".join(f"{n:>22}" for n in names))
    summary = {"repeat": REPEAT, "seq_size": SEQ_SIZE, "rand_size": RAND_SIZE, "results": {}}
    for job, unit, _ in JOBS:
        cells = []
        for n in names:
            value = results[n][job]
            ratio = value / base[job] if base.get(job) else None
            cells.append(f"{value:>12.0f}" + (f" ({ratio:5.2f}x)" if ratio else " " * 9))
            summary["results"].setdefault(n, {})[job] = {
                "value": round(value, 1), "unit": unit,
                "vs_baseline": round(ratio, 3) if ratio else None}
        print(f"{job:<15}{unit:<9}" + "".join(f"{c:>22}" for c in cells))
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    sys.exit(main())
