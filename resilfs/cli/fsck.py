"""Check a filesystem's metadata and set records (exit 0 clean, 1 problems, 2 not checked)."""
import argparse
import json
import os
import sys
from contextlib import AsyncExitStack

import trio

from ..fs import cluster as clusterfile
from ..fs.errors import DataUnavailable
from ..fs.fsck import Report, check_sets, check_state, known_sets
from ..fs.journal_records import CorruptRecord
from ..fs.mount import open_metadata
from ..transport.base import TransportError

EPILOG = """\
Offline (the default), CLUSTER is a cluster file: the metadata journal is read from the
appliances as a mount reads it, and nothing is written; run it on an unmounted
filesystem. With --online, the argument is a mount point: the running mount checks its
own metadata (read-only). Exit codes: 0 all is well, 1 problems were found, 2 something
could not be checked (an appliance did not answer, no filesystem, a bad argument)."""


async def check_offline(cluster: clusterfile.Cluster, journal_dir: str | None = None) -> Report:
    """Load the filesystem's metadata as a mount would, without mounting or writing, and
    check it and its sets (``resilfs.fs.fsck``)."""
    async with AsyncExitStack() as stack:
        try:
            pool, _, journal = await open_metadata(stack, cluster, journal_dir)
        except CorruptRecord as exc:
            return Report(problems=[f"the metadata journal does not replay: {exc}"])
        except (DataUnavailable, TransportError) as exc:
            return Report(unchecked=[f"the metadata cannot be read: {exc}"])
        state = journal.state
        if state.format is None:
            return Report(unchecked=[f"no filesystem named {cluster.name!r} on these "
                                     f"appliances"])
        report = check_state(state)
        report.extend(await check_sets(pool, cluster.name, known_sets(state),
                                       state.format.scheme))
        return report


def check_online(mountpoint: str) -> Report:
    """Ask the mount at ``mountpoint`` (OSError if it is not a resilfs mount)."""
    return Report.from_json(json.loads(os.getxattr(mountpoint, "user.resilfs.fsck")))


def main(args=None) -> int:
    p = argparse.ArgumentParser(prog="resilfs fsck", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", metavar="CLUSTER|MOUNTPOINT")
    p.add_argument("--online", action="store_true",
                   help="check through a running mount (TARGET is its mount point)")
    p.add_argument("--journal-dir", help="the metadata is in this directory (developer "
                                         "option, as for mount)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    try:
        opts = p.parse_args(args)
    except SystemExit as exc:
        return 2 if exc.code else 0
    try:
        if opts.online:
            report = check_online(opts.target)
        else:
            cluster = clusterfile.load(opts.target)
            report = trio.run(check_offline, cluster, opts.journal_dir)
    except OSError as exc:
        print(f"resilfs fsck: {opts.target}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except clusterfile.ClusterFileError as exc:
        print(f"resilfs fsck: {exc}", file=sys.stderr)
        return 2
    if opts.json:
        print(json.dumps({**report.to_json(), "exit": report.exit_code}))
        return report.exit_code
    for kind, lines in (("problem", report.problems), ("not checked", report.unchecked),
                        ("note", report.notes)):
        for line in lines:
            print(f"{kind}: {line}")
    verdict = {0: "clean", 1: f"{len(report.problems)} problems found",
               2: f"{len(report.unchecked)} things could not be checked"}[report.exit_code]
    print(f"{opts.target}: {report.inodes} inodes, {report.sets} sets: {verdict}")
    return report.exit_code
