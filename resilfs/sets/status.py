"""Snapshots of a set's health and rebuild progress, for ``resilfs status`` and tests."""
from dataclasses import dataclass, field

HEALTHY, DEGRADED, REBUILDING, UNAVAILABLE = "healthy", "degraded", "rebuilding", "unavailable"


@dataclass(frozen=True)
class RebuildProgress:
    """Rebuild of one member: bytes written to it so far out of ``total``."""

    member: int
    appliance: str
    done: int
    total: int
    rate: float  # bytes per second since the rebuild of this member started
    eta: float | None  # seconds left at that rate; None before any progress

    @classmethod
    def measure(cls, member: int, appliance: str, done: int, total: int,
                elapsed: float) -> "RebuildProgress":
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else None
        return cls(member, appliance, done, total, rate, eta)


@dataclass(frozen=True)
class SetStatus:
    set_id: str
    scheme: str
    size: int
    state: str  # healthy | degraded | rebuilding | unavailable
    members: tuple[str, ...]  # appliance address of each member, in member order
    failed: tuple[int, ...]  # member numbers that are failed
    rebuilding: tuple[int, ...]  # member numbers being rebuilt
    progress: tuple[RebuildProgress, ...]
    open_intents: int  # write intents currently open on the observers


@dataclass
class ScrubReport:
    """What a scrub (or a resync) found: stripes checked, mismatched, too degraded to check."""

    stripes_checked: int = 0
    mismatched: list[int] = field(default_factory=list)  # stripes whose members disagreed
    unchecked: list[int] = field(default_factory=list)  # stripes too degraded to check
    repaired: bool = False
