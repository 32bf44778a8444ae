"""Commands and reports through ``user.resilfs.*`` extended attributes (S3QL's control file).

Any inode of the mount answers them (the CLI uses the mount point):

* ``getxattr user.resilfs.status``: JSON: appliances, capacity, sets with their health and
  rebuild progress, the last or running scrub, whether the filesystem is read-only, and
  the write-behind cache (bytes cached and dirty, blocks whose writes were lost).
* ``getxattr user.resilfs.fsck``: JSON: the live metadata and the set records checked by
  ``resilfs.fs.fsck`` (read-only; the namespace part between two requests).
* ``setxattr user.resilfs.scrub check|repair``: start a scrub of every set in the
  background (EBUSY while one runs), after flushing the write-behind cache; progress and
  result appear in the status.

Any other ``user.resilfs.*`` name, or a bad value, is EINVAL and changes nothing. Snapshots
will be more names here. ``run()`` (in the mount's nursery) does the scrubs; ``stop()``
ends it, abandoning a running scrub (scrubs change nothing unless repairing, and a repair
of a stripe is atomic under its stripe lock).
"""
import errno
import json
import logging

import trio

from ..sets import SetError
from ..transport.base import TransportError
from .backing import SetBacking
from .data import FileData
from .errors import FsError, refuse
from .fsck import Report, check_sets, check_state, known_sets
from .journal import Journal
from .metadata import Metadata

log = logging.getLogger(__name__)

STATUS = b"user.resilfs.status"
SCRUB = b"user.resilfs.scrub"
FSCK = b"user.resilfs.fsck"


class Control:
    def __init__(self, name: str, metadata: Metadata, data: FileData, backing: SetBacking,
                 journal: Journal, failsafe, cache=None):
        self.name = name
        self.metadata = metadata
        self.data = data
        self.backing = backing
        self.journal = journal
        self.failsafe = failsafe  # resilfs.fs.operations.Failsafe: .read_only
        self.cache = cache  # resilfs.fs.writebehind.WriteBehind, or None: writes go through
        self.scrub: dict | None = None
        self._send, self._receive = trio.open_memory_channel(1)
        self._scope = trio.CancelScope()

    # -- the xattr interface ------------------------------------------------------------
    async def get(self, name: bytes) -> bytes:
        if name == STATUS:
            return json.dumps(await self.status(), sort_keys=True).encode()
        if name == FSCK:
            return json.dumps((await self.fsck()).to_json()).encode()
        raise refuse(errno.EINVAL, f"unknown control attribute {name!r}")

    async def set(self, name: bytes, value: bytes) -> None:
        if name != SCRUB or value not in (b"check", b"repair"):
            raise refuse(errno.EINVAL, f"unknown control command {name!r} = {value!r}")
        if self.scrub is not None and not self.scrub["finished"]:
            raise refuse(errno.EBUSY, "a scrub is running")
        self.scrub = {"repair": value == b"repair", "finished": False, "sets_done": 0,
                      "sets_total": 0, "stripes_checked": 0, "mismatched": 0,
                      "unchecked": 0, "errors": []}
        try:
            self._send.send_nowait(self.scrub)
        except trio.WouldBlock:
            raise refuse(errno.EBUSY, "a scrub is queued") from None

    # -- reports ----------------------------------------------------------------------
    async def status(self) -> dict:
        fmt = self.metadata.state.format
        total, free = await self.data.capacity()
        appliances = []
        pool = self.backing.pool
        for address in pool.addresses:
            entry = {"address": address, "up": pool.is_up(address)}
            if entry["up"]:
                try:
                    st = await (await pool.client(address)).stat()
                    entry.update(capacity=st.capacity, used=st.used)
                except TransportError as exc:
                    entry.update(up=False, error=str(exc))
            appliances.append(entry)
        sets = []
        opened = self.backing.sets()
        for set_id, size in sorted(self.metadata.state.allocator.set_sizes().items()):
            s = opened.get(set_id)
            if s is None:
                sets.append({"id": set_id, "size": size, "state": "not open"})
                continue
            st = s.status()
            sets.append({"id": set_id, "size": size, "state": st.state,
                         "members": list(st.members), "failed": list(st.failed),
                         "rebuilding": list(st.rebuilding),
                         "progress": [{"member": p.member, "appliance": p.appliance,
                                       "done": p.done, "total": p.total, "rate": p.rate,
                                       "eta": p.eta} for p in st.progress]})
        return {"filesystem": self.name, "scheme": fmt.scheme if fmt else None,
                "read_only": self.failsafe.read_only, "inodes": len(self.metadata.state.inodes),
                "data_total": total, "data_free": free, "journal_queued": self.journal.queued,
                "format_version": self.journal.store.format_version,
                "appliances": appliances, "sets": sets, "scrub": self.scrub,
                "cache": self.cache.statistics() if self.cache is not None else None}

    async def fsck(self) -> Report:
        """Check the live metadata (no await in that part) and then the set records."""
        state = self.metadata.state
        report = check_state(state, live=True)
        report.extend(await check_sets(self.backing.pool, self.name, known_sets(state),
                                       state.format.scheme, live=True))
        return report

    # -- background work -----------------------------------------------------------------
    async def run(self) -> None:
        with self._scope:
            async for job in self._receive:
                await self._scrub(job)

    def stop(self) -> None:
        self._scope.cancel()

    async def _scrub(self, job: dict) -> None:
        set_ids = sorted(self.metadata.state.allocator.set_sizes())
        job["sets_total"] = len(set_ids)
        log.info("scrub (%s) of %d sets started", "repair" if job["repair"] else "check",
                 len(set_ids))
        try:
            await self.data.flush()  # the sets as the files have them
        except FsError as exc:
            job["errors"].append(f"write-behind cache: {exc}")
        for set_id in set_ids:
            try:
                s = await self.backing.get(set_id)
                report = await s.scrub(repair=job["repair"])
            except (FsError, SetError, TransportError) as exc:
                job["errors"].append(f"set {set_id}: {exc}")
            else:
                job["stripes_checked"] += report.stripes_checked
                job["mismatched"] += len(report.mismatched)
                job["unchecked"] += len(report.unchecked)
            job["sets_done"] += 1
        job["finished"] = True
        log.info("scrub finished: %d stripes checked, %d mismatched, %d unchecked, %d errors",
                 job["stripes_checked"], job["mismatched"], job["unchecked"],
                 len(job["errors"]))
