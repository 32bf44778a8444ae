"""Consistency check of a filesystem's metadata, against itself and the appliances (fsck).

Two halves, used by ``resilfs fsck`` (offline: on the metadata loaded as a mount loads it,
``resilfs.cli.fsck``) and by the mount's ``user.resilfs.fsck`` attribute (online, read-only,
``Control``):

* ``check_state(state, live)`` looks at the namespace alone, with no I/O and no await (so
  a mount can run it between two requests): every extent page aligned and inside a set the
  metadata knows; no set byte owned by two extents; the free lists disjoint from what the
  files use and (offline) covering everything they do not use; the directory tree
  connected to the root, each directory named once and knowing its parent; link counts
  equal to the names (files) or 2 + subdirectories (directories).
* ``check_sets(pool, owner, sets)`` reads every copy of every set's membership record and
  the regions of the filesystem's owner from every appliance: each known set has a record;
  copies of one epoch agree; a member that is not failed holds the newest copy; its region
  exists with its key and is large enough; the record's size is the metadata's.

Findings are ``problems`` (damage: exit 1), ``unchecked`` (what could not be looked at, e.g.
an appliance that did not answer: exit 2 when nothing else was wrong) and ``notes`` (what
the next mount repairs by itself: nameless inodes left by a crash, records and regions
that no set names). Nothing here writes anything: the journal is loaded as a mount loads
it (``Journal.load`` only reads), records and region lists are only read.

Offline checks are meant for an unmounted filesystem: with a mount running, what is on the
appliances trails what the mount holds in memory; use the online check then.
"""
import json
import stat
from collections import Counter
from dataclasses import dataclass, field

import trio

from ..sets.membership import FAILED, RECORD_PREFIX, Membership
from ..transport.base import NoSuchRegion, TransportError, WrongRegionKey
from .backing import set_name
from .extents import PAGE
from .state import ROOT_INODE, State

#: at most this many lines of each kind in a report, and this many bytes of JSON: the
#: online report travels as an xattr value (64 KiB at most)
MAX_LINES = 200
MAX_JSON = 60_000

#: a running mount's sets are looked at again this many times (a pool interval apart)
#: while anything looks wrong or out of reach: a save or a reconnection may be under way
LIVE_ATTEMPTS = 3

CLEAN, PROBLEMS, UNCHECKED = 0, 1, 2  # exit codes (fsck.s3ql, xfs_repair -n)


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    inodes: int = 0
    sets: int = 0

    def extend(self, other: "Report") -> None:
        self.problems += other.problems
        self.unchecked += other.unchecked
        self.notes += other.notes

    @property
    def exit_code(self) -> int:
        if self.problems:
            return PROBLEMS
        return UNCHECKED if self.unchecked else CLEAN

    def to_json(self) -> dict:
        """As plain data of at most MAX_JSON bytes once encoded: long lists are cut, with
        a last line saying how many lines were left out."""
        keep = MAX_LINES
        while True:
            d = {"problems": _cut(self.problems, keep), "unchecked": _cut(self.unchecked, keep),
                 "notes": _cut(self.notes, keep), "inodes": self.inodes, "sets": self.sets}
            if keep == 0 or len(json.dumps(d)) <= MAX_JSON:
                return d
            keep //= 2

    @classmethod
    def from_json(cls, d: dict) -> "Report":
        return cls(list(d["problems"]), list(d["unchecked"]), list(d["notes"]),
                   int(d["inodes"]), int(d["sets"]))


def _cut(lines: list[str], keep: int) -> list[str]:
    if len(lines) <= keep:
        return list(lines)
    return [*lines[:keep], f"... and {len(lines) - keep} more"]


# -- the namespace ---------------------------------------------------------------------
def check_state(state: State, live: bool = False) -> Report:
    """Check the namespace and its space bookkeeping; see the module docstring.

    ``live``: the state of a running mount, where writes in flight hold reserved space and
    freed space waits in quarantine, so space that is neither free nor used is not a leak.
    Never awaits: a mount calls it between requests.
    """
    report = Report(inodes=len(state.inodes),
                    sets=len(state.allocator.set_sizes()) + len(state.snapsets))
    owned = _check_extents(state, report)
    _check_space(state, owned, live, report)
    _check_tree(state, live, report)
    return report


def _check_extents(state: State, report: Report) -> dict[int, list[tuple[int, int, int, int]]]:
    """Extents inside known sets; returns {set id: [(start, end, ino, file offset)]}."""
    sizes = dict(state.allocator.set_sizes())
    both = set(sizes) & set(state.snapsets)
    for set_id in sorted(both):
        report.problems.append(f"set {set_id} is both a data set and a snapshot set")
    for set_id, (size, _) in state.snapsets.items():
        sizes.setdefault(set_id, size)
    owned: dict[int, list[tuple[int, int, int, int]]] = {}
    for node in state.inodes.values():
        if node.extents is None:
            continue
        for f, n, set_id, o in node.extents:
            where = f"inode {node.ino}: extent at file offset {f} ({n} bytes at set {set_id} " \
                    f"offset {o})"
            if n <= 0 or f % PAGE or n % PAGE or o % PAGE:
                report.problems.append(f"{where} is not page aligned")
            size = sizes.get(set_id)
            if size is None:
                report.problems.append(f"{where} is in a set the metadata does not know")
                continue
            if o < 0 or o + n > size:
                report.problems.append(f"{where} ends outside the set's {size} bytes")
            owned.setdefault(set_id, []).append((o, o + n, node.ino, f))
    for set_id, ranges in sorted(owned.items()):
        ranges.sort()
        end, owner = -1, None
        for start, stop, ino, f in ranges:
            if start < end:
                report.problems.append(
                    f"set {set_id} bytes {start}-{min(stop, end)} are owned twice: by inode "
                    f"{owner[0]} (file offset {owner[1]}) and inode {ino} (file offset {f})")
            if stop > end:
                end, owner = stop, (ino, f)
    return owned


def _check_space(state: State, owned, live: bool, report: Report) -> None:
    """The allocator's free ranges against the extents of each data set."""
    sizes = state.allocator.set_sizes()
    for set_id, free in sorted(state.allocator.free_ranges().items()):
        size = sizes[set_id]
        spans = [(s, s + n, "free") for s, n in free]
        spans += [(s, e, f"used by inode {ino}") for s, e, ino, _ in owned.get(set_id, ())]
        spans.sort()
        pos, what = 0, None
        for start, stop, kind in spans:
            if stop > size:
                report.problems.append(f"set {set_id}: bytes {start}-{stop} ({kind}) end past "
                                       f"the set's {size} bytes")
            if start < pos and (kind == "free" or what == "free"):
                user = what if kind == "free" else kind
                report.problems.append(f"set {set_id}: bytes {start}-{min(stop, pos)} are "
                                       f"free but {user}")
            elif start > pos and not live:
                report.problems.append(f"set {set_id}: bytes {pos}-{start} are neither free "
                                       f"nor used by a file (leaked)")
            if stop > pos:
                pos, what = stop, kind
        if pos < size and not live:
            report.problems.append(f"set {set_id}: bytes {pos}-{size} are neither free nor "
                                   f"used by a file (leaked)")


def _check_tree(state: State, live: bool, report: Report) -> None:
    """Connectivity from the root, parents, link counts."""
    inodes = state.inodes
    root = inodes.get(ROOT_INODE)
    if root is None or not root.is_dir():
        report.problems.append("the root directory (inode 1) is missing or not a directory")
        return
    names: Counter = Counter()
    subdirs: Counter = Counter()
    for node in inodes.values():
        if node.dir is None:
            continue
        for _, name, ino in node.dir.listing():
            child = inodes.get(ino)
            if child is None:
                report.problems.append(f"directory {node.ino}: entry {name!r} names inode "
                                       f"{ino}, which does not exist")
                continue
            names[ino] += 1
            if child.is_dir():
                subdirs[node.ino] += 1
                if child.parent != node.ino:
                    report.problems.append(f"directory {ino} (named {name!r} in directory "
                                           f"{node.ino}) says its parent is {child.parent}")
    reached = {ROOT_INODE}
    todo = [root]
    while todo:
        for _, _, ino in todo.pop().dir.listing():
            child = inodes.get(ino)
            if child is not None and ino not in reached:
                reached.add(ino)
                if child.is_dir():
                    todo.append(child)
    if names[ROOT_INODE]:
        report.problems.append("the root directory is named by a directory entry")
    for ino, node in sorted(inodes.items()):
        if ino >= state.next_ino:
            report.problems.append(f"inode {ino} is not below the next inode number "
                                   f"{state.next_ino}")
        if stat.S_ISLNK(node.mode) and node.target is None:
            report.problems.append(f"symlink {ino} has no target")
        if node.nlink == 0 and names[ino] == 0 and ino != ROOT_INODE:
            report.notes.append(f"inode {ino} has no name "
                                + ("(still open or known to the kernel)" if live else
                                   "(left open by a crash: the next mount deletes it)"))
            continue
        if ino not in reached:
            kind = "directory" if node.is_dir() else "inode"
            report.problems.append(f"{kind} {ino} is not connected to the root "
                                   f"(link count {node.nlink}, {names[ino]} names)")
        if node.is_dir():
            if names[ino] > 1:
                report.problems.append(f"directory {ino} has {names[ino]} names")
            want = 2 + subdirs[ino]
        else:
            want = names[ino]
        if node.nlink != want:
            report.problems.append(f"inode {ino} has link count {node.nlink}, expected {want}")


# -- the sets on the appliances ----------------------------------------------------------
def known_sets(state: State) -> dict[str, int]:
    """{set name: size} of every set the metadata knows (data sets and snapshot sets)."""
    sets = {set_name(i): size for i, size in state.allocator.set_sizes().items()}
    sets.update({set_name(i): size for i, (size, _) in state.snapsets.items()})
    return sets


async def check_sets(pool, owner: str, sets: dict[str, int], scheme: str | None = None,
                     live: bool = False) -> Report:
    """Check the membership records of ``sets`` ({name: size}) on every appliance of
    ``pool``; see the module docstring. ``scheme``: that of the data sets (snapshot sets
    may differ and are not compared). ``live``: a mount is running, so a set record that
    is not yet stored, or a save half done, is looked at again a few times before it
    counts. Appliances that do not answer go to ``unchecked`` (and their connection is
dropped, so that the pool reconnects); nothing is written."""
    report = await _check_sets_once(pool, owner, sets, scheme)
    for _ in range(LIVE_ATTEMPTS if live else 0):
        if not report.problems and not report.unchecked:
            break
        await trio.sleep(max(pool.retry_interval, 0.5))
        report = await _check_sets_once(pool, owner, sets, scheme)
    return report


async def _check_sets_once(pool, owner: str, sets: dict[str, int], scheme) -> Report:
    report = Report(sets=len(sets))
    copies: dict[str, dict[str, bytes]] = {}  # set name -> {address: record value}
    regions: dict[str, dict[int, int]] = {}  # address -> {region id: size}
    answered: set[str] = set()
    clients = {}

    async def survey(address: str) -> None:
        client = None
        try:
            client = await pool.client(address)
            found = {r.region_id: r.size for r in await client.regions(owner)}
            names = [n for n in await client.record_list(owner) if n.startswith(RECORD_PREFIX)]
            for name in names:
                got = await client.record_get(owner, name)
                if got is not None:
                    copies.setdefault(name[len(RECORD_PREFIX):], {})[address] = got[1]
        except TransportError as exc:
            report.unchecked.append(f"appliance {address} did not answer: {exc}")
            if client is not None:  # a dead connection: the pool's next client() reconnects
                await pool.mark_failed(address, client)
            return
        regions[address] = found
        clients[address] = client
        answered.add(address)

    async with trio.open_nursery() as nursery:
        for address in pool.addresses:
            nursery.start_soon(survey, address)
    named: set[tuple[str, int]] = set()
    for name, size in sorted(sets.items()):
        newest = _check_record(name, size, copies.get(name, {}), answered, scheme, report)
        if newest is None:
            continue
        for i, m in enumerate(newest.members):
            if m.region_id:
                named.add((m.appliance, m.region_id))
            if m.state == FAILED or m.appliance not in answered:
                continue
            where = f"set {name}: member {i} (region {m.region_id} on {m.appliance})"
            have = regions[m.appliance].get(m.region_id)
            if have is None:
                report.problems.append(f"{where} does not exist")
                continue
            if have != m.size:
                report.problems.append(f"{where} has {have} bytes, its record says {m.size}")
            try:
                await clients[m.appliance].lookup(m.region_id, m.key)
            except (WrongRegionKey, NoSuchRegion) as exc:
                report.problems.append(f"{where}: the record's key does not open it: {exc}")
            except TransportError as exc:
                report.unchecked.append(f"{where}: {exc}")
    for name in sorted(set(copies) - set(sets)):
        report.notes.append(f"set record {name} on {', '.join(sorted(copies[name]))} names a "
                            f"set the metadata does not know (the next mount deletes it)")
    stray = [(a, r, n) for a, found in regions.items() for r, n in found.items()
             if (a, r) not in named]
    if stray and len(answered) == len(pool.addresses):
        report.notes.append(f"{len(stray)} regions ({sum(n for *_, n in stray)} bytes) are "
                            f"named by no set the metadata knows")
    return report


def _check_record(name: str, size: int, found: dict[str, bytes], answered: set[str],
                  scheme: str | None, report: Report) -> Membership | None:
    """The newest copy of one set's record, after checking the copies against each other."""
    if not found:
        if answered:
            report.problems.append(f"set {name}: no appliance holds its membership record")
        return None
    parsed: dict[str, Membership] = {}
    for address, value in sorted(found.items()):
        try:
            parsed[address] = Membership.from_bytes(value)
        except ValueError as exc:
            report.problems.append(f"set {name}: the record on {address} does not parse: {exc}")
    if not parsed:
        return None
    by_epoch: dict[int, dict[bytes, list[str]]] = {}
    for address, m in parsed.items():
        by_epoch.setdefault(m.epoch, {}).setdefault(found[address], []).append(address)
    for epoch, values in sorted(by_epoch.items()):
        if len(values) > 1:
            holders = "; ".join(", ".join(addresses) for addresses in values.values())
            report.problems.append(f"set {name}: the witnesses disagree about epoch {epoch} "
                                   f"({len(values)} different records, held by {holders})")
    epoch = max(by_epoch)
    newest = parsed[min(by_epoch[epoch].values())[0]]
    if newest.set_id != name:
        report.problems.append(f"set {name}: its record names set {newest.set_id!r}")
    if newest.size != size:
        report.problems.append(f"set {name}: its record says {newest.size} bytes, the "
                               f"metadata {size}")
    if scheme is not None and str(newest.scheme) != scheme:
        report.problems.append(f"set {name}: its record says {newest.scheme}, the filesystem "
                               f"{scheme}")
    appliances = [m.appliance for m in newest.members]
    if len(set(appliances)) != len(appliances):
        report.problems.append(f"set {name}: two members on one appliance ({appliances})")
    data_chunks = newest.scheme.data_chunks
    need = -(-size // (data_chunks * newest.chunk_size)) * newest.chunk_size
    for i, m in enumerate(newest.members):
        if m.state != FAILED and m.size < need:
            report.problems.append(f"set {name}: member {i} has {m.size} bytes, a set of "
                                   f"{size} bytes needs {need}")
        if m.state == FAILED or m.appliance not in answered:
            continue
        held = parsed.get(m.appliance)
        if held is None or held.epoch != epoch:
            report.problems.append(
                f"set {name}: member {i} on {m.appliance} is not failed but holds "
                + ("no record" if held is None else f"epoch {held.epoch}")
                + f", not the newest ({epoch})")
    return newest
