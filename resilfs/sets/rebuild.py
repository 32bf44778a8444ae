"""The rebuild worker: restores redundancy of degraded sets in the background (claim 20).

It also ends the sets' idle write intents on each pass, so their clearing does not wait
for the next write, and every ``probe_interval`` seconds probes the appliances: a member
whose appliance died while its set was idle is marked failed then, not at the next I/O.

One worker serves every set of a mount. Per failed member it first tries to take the same
region back (appliance returned with its persist dir: only the stripes it missed are
copied); after ``replace_after`` seconds, or at once if the region is gone, it allocates
a replacement on an appliance not in the set and rebuilds it whole. Rebuilding goes run
by run of stripes, each under the stripes' locks, so writes to other stripes continue and
a write to the stripe being rebuilt waits for it.

Throttle, like md's speed_limit_min/max: while the set saw foreground I/O in the last
``busy_window`` seconds the worker goes no faster than ``rate_floor`` bytes/s, otherwise
up to ``rate_ceiling`` (either None: unlimited).

Failures: a member or appliance failing during a step is marked failed by the set; the
worker logs it and tries again on a later pass. ``stop()`` cancels it between or inside
steps; a cancelled step leaves its stripes dirty and they are redone later.
"""
import logging
import zlib

import trio

from .errors import SetError
from .membership import FAILED, REBUILDING
from .resiliency import ResiliencySet
from .resync import finished, reattach, replace
from .stripes import contiguous

log = logging.getLogger(__name__)


class RebuildWorker:
    def __init__(self, *, rate_floor: float | None = 64 << 20, rate_ceiling: float | None = None,
                 replace_after: float = 5.0, poll_interval: float = 0.25,
                 busy_window: float = 0.1, run_bytes: int = 4 << 20,
                 save_interval: float = 1.0, probe_interval: float = 1.0):
        self.rate_floor = rate_floor
        self.rate_ceiling = rate_ceiling
        self.replace_after = replace_after
        self.poll_interval = poll_interval
        self.busy_window = busy_window
        self.run_bytes = run_bytes
        self.save_interval = save_interval
        self.probe_interval = probe_interval
        self._last_probe = float("-inf")
        self._sets: dict[int, ResiliencySet] = {}
        self._wakeup = trio.Event()
        self._scope: trio.CancelScope | None = None

    def watch(self, s: ResiliencySet) -> None:
        """Keep ``s`` redundant from now on (it wakes the worker when a member fails)."""
        if id(s) not in self._sets:
            self._sets[id(s)] = s
            s.add_listener(lambda _: self._wakeup.set())
            self._wakeup.set()

    def unwatch(self, s: ResiliencySet) -> None:
        """Stop rebuilding ``s`` (before closing it)."""
        self._sets.pop(id(s), None)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Work until ``stop()`` or cancellation."""
        with trio.CancelScope() as self._scope:
            task_status.started()
            while True:
                self._wakeup = trio.Event()
                busy = False
                if trio.current_time() - self._last_probe >= self.probe_interval:
                    await self._probe()
                for s in list(self._sets.values()):
                    if s.closed:
                        continue
                    try:
                        busy |= await self._work(s)
                        await s.intents.end_idle()  # batched clearing while writes pause
                    except SetError as e:
                        log.warning("rebuild of set %s: %s", s.set_id, e)
                if not busy:
                    with trio.move_on_after(self.poll_interval):
                        await self._wakeup.wait()

    async def _probe(self) -> None:
        """Probe the pools of the watched sets; mark members on dropped appliances failed."""
        self._last_probe = trio.current_time()
        pools = {id(s.pool): s.pool for s in self._sets.values()}
        for pool in pools.values():
            await pool.probe()
        for s in list(self._sets.values()):
            try:
                await s.notice_down_members()
            except SetError as e:
                log.warning("set %s: %s", s.set_id, e)

    def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    async def _work(self, s: ResiliencySet) -> bool:
        """One pass over the set's non-ok members; True if it did rebuild work."""
        did = False
        for index, member in enumerate(s.members):
            if member.state == FAILED:
                await self._restore(s, index)
            if s.members[index].state == REBUILDING:
                did |= await self._rebuild(s, index)
        return did

    async def _restore(self, s: ResiliencySet, index: int) -> None:
        """Bring a failed member back, or replace it once it is overdue or its region lost."""
        outcome = await reattach(s, index)
        if outcome == "reattached":
            return
        member = s.members[index]
        overdue = member.failed_at is None or \
            trio.current_time() - member.failed_at >= self.replace_after
        if outcome == "down" and not overdue:
            return
        in_set = {m.appliance for i, m in enumerate(s.members) if i != index}
        candidates = s.pool.addresses
        start = zlib.crc32(f"{s.owner}/{s.set_id}/{index}".encode()) % len(candidates)
        for address in candidates[start:] + candidates[:start]:  # spread replacements
            if address in in_set or (address == member.appliance and outcome == "down"):
                continue
            try:
                await replace(s, index, address)
                return
            except SetError as e:
                log.info("cannot place a replacement of %s member %d on %s: %s", s.set_id,
                         index, address, e)

    async def _rebuild(self, s: ResiliencySet, index: int) -> bool:
        """Rebuild member ``index`` run by run under the throttle; True if bytes moved."""
        member = s.members[index]
        moved = 0
        last_save = trio.current_time()
        for run in contiguous(sorted(member.dirty), s.run_stripes(self.run_bytes)):
            if s.closed or s.members[index] is not member or member.state != REBUILDING:
                break
            started = trio.current_time()
            n = await s.rebuild_run(index, run)
            moved += n
            busy = started - s.last_activity < self.busy_window
            rate = self.rate_floor if busy else self.rate_ceiling
            if rate and n:
                await trio.sleep(max(0.0, n / rate - (trio.current_time() - started)))
            else:
                await trio.lowlevel.checkpoint()
            if trio.current_time() - last_save >= self.save_interval:
                s.changed()
                await s.persist()
                last_save = trio.current_time()
        if s.members[index] is member and finished(s, index):
            s.progress.pop(index, None)
            await s.persist()
        return moved > 0

