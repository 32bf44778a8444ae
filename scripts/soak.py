#!/usr/bin/env python3
"""Soak: the fault schedule of tests/fault/test_fault_schedule.py for as long as asked.

    scripts/soak.py --seconds 1800 --scheme ec:4+2 [--transport tcp|shm] [--seed N]
                    [--write-mode M]

Random file operations on a real mount (write, mmap write, truncate, fsync, rename, unlink,
snapshot), a fault every few operations (appliance SIGKILL, SIGSTOP, SIGTERM, out of
memory, a network partition over tcp when root (ip netns), each ended by a
restart/SIGCONT/free/rejoin and a wait for healthy sets; or a SIGKILL of the mount
daemon and a remount), and after each recovery a check of every file against
the model, scrub and ``fsck --online`` (scripts/faultschedule.py). A check that fails is
printed and counted, the model is taken from the files as they are, and the soak goes
on. A progress line while it runs; one JSON line at the end:
{"seconds", "ops", "faults", "fsyncs_checked", "bytes_lost", "bytes_wrong", "errors"}.
Exit 0 when nothing was lost, wrong or failed.
"""
import argparse
import json
import os
import sys
import time

from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts import netns_appliances  # noqa: E402
from scripts.faultschedule import SCHEMES, Harness, ScheduleFailure  # noqa: E402


def main(args=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--scheme", required=True, help="mirror:2, parity:2+1, ec:4+2, ...")
    p.add_argument("--transport", default="tcp", choices=["tcp", "shm"])
    p.add_argument("--write-mode", choices=["parallel", "sequential", "forward"],
                   help=f"default by scheme: {SCHEMES}")
    p.add_argument("--seed", type=int, default=None, help="default: from the clock (printed)")
    p.add_argument("--workdir", help="keep appliance data and logs here (default: a temp dir, "
                                     "removed at the end)")
    opts = p.parse_args(args)
    seed = opts.seed if opts.seed is not None else time.time_ns() % (1 << 32)
    last = ["starting"]
    partition = opts.transport == "tcp" and netns_appliances.available()
    h = Harness(opts.scheme, opts.write_mode, opts.transport, workdir=opts.workdir, seed=seed,
                log=lambda message: last.__setitem__(0, message), partition=partition)
    print(f"soak: {opts.scheme} over {opts.transport}"
          f"{' (partitions too)' if partition else ''}, {opts.seconds:.0f} s, seed {seed} "
          f"(replay: --seed {seed})", file=sys.stderr)
    start = time.monotonic()
    columns = (TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[line]}"))
    try:
        h.start()
        with Progress(*columns, transient=True) as progress:
            task = progress.add_task(opts.scheme, total=opts.seconds, line="")
            while (elapsed := time.monotonic() - start) < opts.seconds:
                s = h.stats
                progress.update(task, completed=elapsed, line=(
                    f"ops {s.ops} faults {s.faults} checks {s.checks} fsyncs checked "
                    f"{s.fsyncs_checked} lost {s.bytes_lost} wrong {s.bytes_wrong} errors "
                    f"{s.errors} | {last[0]}"))
                try:
                    for _ in range(h.rng.randrange(5, 40)):
                        h.random_op()
                    h.random_fault()
                except ScheduleFailure as exc:
                    progress.console.print(f"[red]check failed after {last[0]}:[/] {exc}")
                    try:
                        h.adopt_files()
                    except ScheduleFailure as again:  # counted; the soak cannot go on
                        progress.console.print(f"[red]cannot go on:[/] {again}")
                        break
            if h.fault is not None:
                try:
                    h.appliance_up()
                except ScheduleFailure as exc:
                    progress.console.print(f"[red]last check failed:[/] {exc}")
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr)
    finally:
        h.close()
    result = h.stats.json(time.monotonic() - start)
    print(json.dumps(result))
    return 0 if not (result["bytes_lost"] or result["bytes_wrong"] or result["errors"]) else 1


if __name__ == "__main__":
    sys.exit(main())
