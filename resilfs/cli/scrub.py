"""Check every set's redundancy through a mount (and repair with --repair)."""
import argparse
import os
import sys
import time

from rich.progress import Progress

from .status import read_status


def main(args=None) -> int:
    p = argparse.ArgumentParser(prog="resilfs scrub", description=__doc__)
    p.add_argument("mountpoint")
    p.add_argument("--repair", action="store_true", help="rewrite mismatched members")
    opts = p.parse_args(args)
    try:
        os.setxattr(opts.mountpoint, "user.resilfs.scrub",
                    b"repair" if opts.repair else b"check")
        with Progress(transient=True) as progress:
            task = progress.add_task("scrubbing", total=None)
            while True:
                scrub = read_status(opts.mountpoint)["scrub"]
                progress.update(task, total=scrub["sets_total"] or None,
                                completed=scrub["sets_done"])
                if scrub["finished"]:
                    break
                time.sleep(0.2)
    except OSError as exc:
        print(f"resilfs scrub: {opts.mountpoint}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"{scrub['stripes_checked']} stripes checked, {scrub['mismatched']} mismatched"
          + (" (repaired)" if opts.repair and scrub["mismatched"] else "")
          + f", {scrub['unchecked']} unchecked, {len(scrub['errors'])} errors")
    for error in scrub["errors"]:
        print(f"  {error}")
    clean = not scrub["errors"] and not scrub["unchecked"] and (opts.repair
                                                                  or not scrub["mismatched"])
    return 0 if clean else 1
