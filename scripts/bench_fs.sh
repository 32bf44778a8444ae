#!/usr/bin/env bash
# fio with buffered I/O on tmpfs, the bare pyfuse3 baseline (scripts/baseline_ramfs.py) and
# resilfs (mirror:2 and ec:4+2, over shm and tcp), all in one invocation: sequential write
# and read (1 MiB), random write and read (4 KiB, psync) and a metadata job (create, stat,
# unlink 10,000 files). Prints a table of medians with ratios to the baseline, then one
# JSON line. Environment: REPEAT (runs per job, default 3), SEQ_SIZE (default 256M),
# RAND_SIZE (64M), RUNTIME (seconds of each random job, 5), TARGETS (comma-separated
# subset of tmpfs,baseline,mirror2-shm,mirror2-tcp,ec42-shm,ec42-tcp; also baseline-xattrs,
# on request: the baseline answering getxattr as resilfs does, which costs every write(2)
# a getxattr round trip; see docs/filesystem.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
exec "$PY" scripts/fsbench.py "$@"
