#!/usr/bin/env python3
"""A 4 KiB write followed by fsync, as databases do: fio ``--rw=randwrite --bs=4k
--fsync=1`` on fresh mounts (scripts/fsbench.py's targets), for one or more source trees
of resilfs, alternating between them in one run so that a busy machine affects all alike.

Environment: TREES (comma-separated NAME=PATH of resilfs source trees with the ext
modules built; default: this tree), TARGETS (default ec42-shm,mirror2-tcp), REPEAT
(rounds, default 3), RUNTIME (seconds per job, default 5). Prints per tree and target the
median IOPS and mean fsync latency over the rounds, then one JSON line.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import fsbench  # noqa: E402

TREES = dict(t.split("=", 1) for t in os.environ.get(
    "TREES", f"this={os.path.dirname(HERE)}").split(",") if t)
TARGETS = [t for t in os.environ.get("TARGETS", "ec42-shm,mirror2-tcp").split(",") if t]
REPEAT = int(os.environ.get("REPEAT", "3"))
RUNTIME = os.environ.get("RUNTIME", "5")


def fsync_job(directory: str) -> tuple[float, float]:
    """(IOPS, mean fsync latency in µs) of one fio run in ``directory``."""
    cmd = ["fio", "--output-format=json", "--ioengine=psync", "--iodepth=1", "--direct=0",
           "--name=fsync", "--rw=randwrite", "--bs=4k", "--size=16M", "--fsync=1",
           "--time_based", f"--runtime={RUNTIME}", "--filename=f", f"--directory={directory}"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=directory, timeout=600)
    if out.returncode:
        raise RuntimeError(f"fio failed: {out.stderr[-2000:]}")
    job = json.loads(out.stdout[out.stdout.index("{"):])["jobs"][0]
    return job["write"]["iops"], job["sync"]["lat_ns"]["mean"] / 1000


def main() -> int:
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    os.chdir(tempfile.gettempdir())  # "python -m resilfs" imports from the cwd first
    saved = os.environ.get("PYTHONPATH")
    try:
        for _ in range(REPEAT):
            for target in TARGETS:
                for tree, path in TREES.items():
                    os.environ["PYTHONPATH"] = os.path.abspath(path)  # mkfs, mount daemon
                    work = tempfile.mkdtemp(prefix=f"bench-fsync-{tree}-")
                    try:
                        with fsbench.target(target, work) as directory:
                            result = fsync_job(directory)
                    finally:
                        shutil.rmtree(work, ignore_errors=True)
                    runs.setdefault((tree, target), []).append(result)
                    print(f"{tree} {target}: {result[0]:.0f} IOPS, fsync {result[1]:.0f} µs",
                          file=sys.stderr)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    print(f"\nfio randwrite 4k + fsync, psync, iodepth 1; medians of {REPEAT} alternating runs")
    summary = {}
    for target in TARGETS:
        for tree in TREES:
            values = runs[(tree, target)]
            iops = statistics.median(v[0] for v in values)
            lat = statistics.median(v[1] for v in values)
            summary[f"{tree} {target}"] = {"iops": round(iops), "fsync_us": round(lat)}
            print(f"{target:<14}{tree:<10}{iops:>8.0f} IOPS {lat:>8.0f} µs per fsync")
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
