"""Show a mount's appliances, capacity, set health and rebuild progress."""
import argparse
import json
import os
import sys
import time

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from ..fs import embedded

STATUS = "user.resilfs.status"


def read_status(mountpoint: str) -> dict:
    """The mount's status (OSError if it is not a resilfs mount), plus PIDs ``up`` recorded."""
    status = json.loads(os.getxattr(mountpoint, STATUS))
    info = embedded.load(mountpoint)
    if info:
        pids = {a["address"]: a["pid"] for a in info["appliances"]}
        for appliance in status["appliances"]:
            if appliance["address"] in pids:
                appliance["pid"] = pids[appliance["address"]]
        status["mount_pid"] = info["mount_pid"]
    return status


def _size(n) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def render(status: dict) -> Group:
    head = (f"[bold]{status['filesystem']}[/] {status['scheme']}  "
            f"{_size(status['data_total'] - status['data_free'])} used of "
            f"{_size(status['data_total'])}  {status['inodes']} inodes"
            + (f"  format {status['format_version']}" if status.get("format_version") else "")
            + ("  [bold red]READ-ONLY (data lost beyond tolerance)[/]"
               if status["read_only"] else ""))
    apps = Table("appliance", "state", "used", "capacity", "pid", box=None)
    for a in status["appliances"]:
        apps.add_row(a["address"], "[green]up[/]" if a["up"] else "[red]down[/]",
                     _size(a.get("used", 0)), _size(a.get("capacity", 0)),
                     str(a.get("pid", "")))
    sets = Table("set", "state", "members", "rebuild", box=None)
    colors = {"healthy": "green", "degraded": "yellow", "rebuilding": "cyan",
              "unavailable": "red"}
    for s in status["sets"]:
        bars = []
        for p in s.get("progress", []):
            eta = f" ETA {p['eta']:.0f}s" if p.get("eta") else ""
            bars.append(Group(ProgressBar(total=p["total"] or 1, completed=p["done"], width=30),
                              f"member {p['member']} on {p['appliance']}: "
                              f"{100 * p['done'] / (p['total'] or 1):.0f}% "
                              f"{_size(p['rate'])}/s{eta}"))
        members = ", ".join(("[red]" + m + "[/]") if i in s.get("failed", []) else m
                            for i, m in enumerate(s.get("members", [])))
        sets.add_row(str(s["id"]), f"[{colors.get(s['state'], 'white')}]{s['state']}[/]",
                     members, Group(*bars) if bars else "")
    parts = [head, apps, sets]
    cache = status.get("cache")
    if cache:
        parts.append(f"write-behind cache: {_size(cache['cached_bytes'])} cached, "
                     f"{_size(cache['dirty_block_bytes'])} in dirty blocks"
                     + (f", [bold red]{cache['lost_blocks']} blocks of writes lost[/]"
                        if cache["lost_blocks"] else ""))
    scrub = status.get("scrub")
    if scrub:
        parts.append(f"scrub ({'repair' if scrub['repair'] else 'check'}): "
                     f"{scrub['sets_done']}/{scrub['sets_total']} sets, "
                     f"{scrub['mismatched']} mismatched, {scrub['unchecked']} unchecked"
                     + (" - done" if scrub["finished"] else ""))
    return Group(*parts)


def main(args=None) -> int:
    p = argparse.ArgumentParser(prog="resilfs status", description=__doc__)
    p.add_argument("mountpoint")
    p.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    p.add_argument("--watch", action="store_true", help="refresh every second until Ctrl-C")
    opts = p.parse_args(args)
    try:
        status = read_status(opts.mountpoint)
    except OSError as exc:
        print(f"resilfs status: {opts.mountpoint}: not a resilfs mount ({exc.strerror})",
              file=sys.stderr)
        return 1
    try:
        if opts.json:
            print(json.dumps(status, sort_keys=True))
            return 0
        if not opts.watch:
            Console().print(render(status))
            return 0
        with Live(render(status), refresh_per_second=2) as live:
            while True:
                time.sleep(1)
                live.update(render(read_status(opts.mountpoint)))
    except (KeyboardInterrupt, BrokenPipeError):
        return 0
