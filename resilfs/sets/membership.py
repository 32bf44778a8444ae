"""A set's membership record: which regions form it, their state, what each one missed.

The record is JSON, stored under the name ``set/<set_id>`` of the set's owner on every
member appliance that is not failed (required) and, best effort, on every other reachable
appliance of the pool (witnesses), so any client or appliance can learn the current set,
and an opener that reaches only a stale member still finds the newer record elsewhere.
Each copy is written with the appliance's compare-and-set generation; ``epoch`` inside the
value orders copies across appliances (a member that was failed holds an older one).
"""
import json
import logging
from dataclasses import dataclass, field
from functools import cached_property

import trio

from ..scheme import Scheme
from ..transport.base import RecordConflict, RegionHandle, TransportError
from .errors import SetConflict, SetNotFound
from .pool import AppliancePool
from .stripes import from_runs, to_runs

log = logging.getLogger(__name__)

RECORD_PREFIX = "set/"
FORMAT = 1

OK, FAILED, REBUILDING = "ok", "failed", "rebuilding"


def record_name(set_id: str) -> str:
    return RECORD_PREFIX + set_id


@dataclass(eq=False)
class Member:
    """One region of the set. ``dirty``: stripes whose contents on this member are stale.

    ``ok``: serves every stripe not in ``dirty`` (normally none). ``failed``: serves nothing;
    ``dirty`` collects the stripes it missed, so a return resyncs only those. ``rebuilding``:
    takes writes and serves stripes not in ``dirty`` while the rebuild fills the rest.
    The region's identity (appliance, region_id, key, size) never changes: another
    region is another Member.
    """

    appliance: str
    region_id: int
    key: int
    size: int
    state: str = OK
    dirty: set[int] = field(default_factory=set)
    failed_at: float | None = None  # trio clock when it failed (not stored)

    @cached_property
    def handle(self) -> RegionHandle:
        return RegionHandle(self.appliance, self.region_id, self.size, self.key)

    def usable(self, stripe: int) -> bool:
        """Whether this member's copy of ``stripe`` is current (readable, worth writing)."""
        return self.state != FAILED and stripe not in self.dirty

    def to_json(self) -> dict:
        return {"appliance": self.appliance, "region": self.region_id, "key": self.key,
                "size": self.size, "state": self.state, "dirty": to_runs(self.dirty)}

    @classmethod
    def from_json(cls, d: dict) -> "Member":
        state = d["state"]
        if state not in (OK, FAILED, REBUILDING):
            raise ValueError(f"unknown member state {state!r}")
        return cls(str(d["appliance"]), int(d["region"]), int(d["key"]), int(d["size"]),
                   state, from_runs(d["dirty"]))


@dataclass(eq=False)
class Membership:
    owner: str
    set_id: str
    scheme: Scheme
    backend: str
    chunk_size: int
    size: int
    members: list[Member]
    epoch: int = 0

    def to_bytes(self) -> bytes:
        return json.dumps({
            "format": FORMAT, "owner": self.owner, "set": self.set_id,
            "scheme": str(self.scheme), "backend": self.backend,
            "chunk_size": self.chunk_size, "size": self.size, "epoch": self.epoch,
            "members": [m.to_json() for m in self.members],
        }, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Membership":
        """Parse a record; raises ValueError (with the reason) if it is not a valid one."""
        try:
            d = json.loads(data)
            if d.get("format") != FORMAT:
                raise ValueError(f"unknown record format {d.get('format')!r}")
            return cls(str(d["owner"]), str(d["set"]), Scheme.parse(d["scheme"]),
                       str(d["backend"]), int(d["chunk_size"]), int(d["size"]),
                       [Member.from_json(m) for m in d["members"]], int(d["epoch"]))
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"malformed set record: {e!r}") from None


async def load(pool: AppliancePool, owner: str, set_id: str) -> tuple[Membership, dict[str, int]]:
    """Read the record from every reachable appliance of the pool; keep the newest epoch.

    Returns the membership and the record generation seen on each appliance that answered.
    Raises SetNotFound when no reachable appliance holds a valid record.
    """
    name = record_name(set_id)
    found: dict[str, tuple[int, bytes]] = {}

    async def get(address: str) -> None:
        try:
            client = await pool.client(address)
        except TransportError:
            return
        try:
            got = await client.record_get(owner, name)
        except TransportError as e:
            log.warning("reading record %s from %s: %s", name, address, e)
            await pool.mark_failed(address, client)
            return
        if got is not None:
            found[address] = got

    async with trio.open_nursery() as nursery:
        for address in pool.addresses:
            nursery.start_soon(get, address)
    best: Membership | None = None
    for address, (_, value) in found.items():
        try:
            m = Membership.from_bytes(value)
        except ValueError as e:
            log.error("ignoring record %s on %s: %s", name, address, e)
            continue
        if best is None or m.epoch > best.epoch:
            best = m
    if best is None:
        raise SetNotFound(f"set {set_id!r} of {owner!r}: no reachable appliance has its record")
    return best, {address: gen for address, (gen, _) in found.items()}


async def save(pool: AppliancePool, membership: Membership, generations: dict[str, int],
               addresses: list[str], witnesses: list[str] = ()) -> list[str]:
    """Write the record to ``addresses`` and ``witnesses`` concurrently; return the
    ``addresses`` that failed (a failing witness is only logged).

    ``generations`` holds the generation last seen per appliance and is updated. An
    appliance not in it is asked first (a returning member holds an older copy; a
    cancelled put leaves the generation unknown). A copy that is not at the generation we
    last saw is asked for too: with no copy or an older epoch than ours the appliance is
    behind (it came back without its memory between two saves) and takes ours. Raises
    SetConflict if a copy holds a newer epoch than ours, or ours at another generation
    (another client saved meanwhile).
    """
    name = record_name(membership.set_id)
    value = membership.to_bytes()
    failed: list[str] = []
    conflicts: list[str] = []

    async def put(address: str) -> None:
        try:
            client = await pool.client(address)
        except TransportError:
            failed.append(address)
            return
        try:
            if address not in generations:
                got = await client.record_get(membership.owner, name)
                if got is not None and _epoch(got[1]) > membership.epoch:
                    conflicts.append(f"{address} holds a newer epoch")
                    return
                generations[address] = got[0] if got else 0
            log.debug("put %s epoch %d to %s expecting %d", name, membership.epoch, address,
                      generations[address])
            try:
                generations[address] = await client.record_put(
                    membership.owner, name, value, generations[address])
                return
            except RecordConflict as e:
                generations.pop(address, None)
                conflict = f"{address}: {e}"
            # the copy moved: another client wrote it (same or newer epoch: a conflict), or
            # the appliance is behind (no copy, or an older epoch): then it takes ours
            got = await client.record_get(membership.owner, name)
            if got is not None and _epoch(got[1]) >= membership.epoch:
                conflicts.append(conflict)
                return
            generations[address] = await client.record_put(
                membership.owner, name, value, got[0] if got else 0)
        except RecordConflict as e:
            generations.pop(address, None)
            conflicts.append(f"{address}: {e}")
        except TransportError as e:
            log.warning("writing record %s to %s: %s", name, address, e)
            generations.pop(address, None)
            await pool.mark_failed(address, client)
            failed.append(address)
        except BaseException:  # cancelled: the put may have landed; ask next time
            generations.pop(address, None)
            raise

    async with trio.open_nursery() as nursery:
        for address in [*addresses, *witnesses]:
            nursery.start_soon(put, address)
    if conflicts:
        raise SetConflict(f"set {membership.set_id!r} was changed by another client: "
                          + "; ".join(conflicts))
    return [a for a in failed if a in addresses]


async def delete(pool: AppliancePool, owner: str, set_id: str, addresses) -> None:
    """Delete the set's record on each of ``addresses``, one after the other (best effort:
    an appliance that fails is logged and skipped)."""
    name = record_name(set_id)
    for address in addresses:
        try:
            await (await pool.client(address)).record_delete(owner, name)
        except TransportError as e:
            log.warning("deleting record %s on %s: %s", name, address, e)


def _epoch(value: bytes) -> int:
    """The epoch of a stored record; -1 for an unreadable one (it gets overwritten)."""
    try:
        return Membership.from_bytes(value).epoch
    except ValueError:
        return -1


async def list_sets(pool: AppliancePool, owner: str) -> list[str]:
    """The ids of the sets of ``owner`` whose records some reachable appliance holds."""
    names: set[str] = set()

    async def ask(address: str) -> None:
        try:
            client = await pool.client(address)
        except TransportError:
            return
        try:
            names.update(await client.record_list(owner))
        except TransportError:
            await pool.mark_failed(address, client)

    async with trio.open_nursery() as nursery:
        for address in pool.addresses:
            nursery.start_soon(ask, address)
    return sorted(n[len(RECORD_PREFIX):] for n in names if n.startswith(RECORD_PREFIX))
