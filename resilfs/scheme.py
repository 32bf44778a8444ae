"""Redundancy schemes: the relationship between the members of a resiliency set.

A scheme string is one of ``mirror:N`` (N copies), ``parity:K+1`` (K data chunks and one
XOR parity chunk) or ``ec:K+M`` (K data chunks and M Reed-Solomon coding chunks).
"""
import re
from dataclasses import dataclass

from .errors import ResilfsError

MAX_MEMBERS = 255


class InvalidScheme(ResilfsError, ValueError):
    """A scheme string or shape that resilfs cannot use."""


_SCHEME_RE = re.compile(r"^(mirror):(\d+)$|^(parity|ec):(\d+)\+(\d+)$")


@dataclass(frozen=True)
class Scheme:
    """A redundancy scheme: ``kind`` with ``data_chunks`` (K) and ``coding_chunks`` (M).

    Mirror:N is K=1, M=N-1. Construction checks the shape and raises InvalidScheme.
    """

    kind: str
    data_chunks: int
    coding_chunks: int

    def __post_init__(self):
        k, m = self.data_chunks, self.coding_chunks
        if self.kind not in ("mirror", "parity", "ec"):
            raise InvalidScheme(f"unknown scheme kind {self.kind!r} (use mirror, parity or ec)")
        if k < 1:
            raise InvalidScheme(f"{self.kind} needs at least 1 data chunk, got {k}")
        if m < 0:
            raise InvalidScheme(f"{self.kind} cannot have {m} coding chunks")
        if k + m > MAX_MEMBERS:
            raise InvalidScheme(f"{self.kind} with {k + m} members exceeds {MAX_MEMBERS}")
        if self.kind == "mirror" and (k != 1 or m < 1):
            raise InvalidScheme(f"mirror needs at least 2 copies, got {k + m}")
        if self.kind == "parity" and m != 1:
            raise InvalidScheme(f"parity has exactly 1 parity chunk, got {m}")
        if self.kind == "ec" and m < 1:
            raise InvalidScheme("ec needs at least 1 coding chunk")

    @classmethod
    def parse(cls, text: str) -> "Scheme":
        """Parse ``mirror:N``, ``parity:K+1`` or ``ec:K+M``; raise InvalidScheme otherwise."""
        match = _SCHEME_RE.match(text.strip()) if isinstance(text, str) else None
        if match is None:
            raise InvalidScheme(
                f"invalid scheme {text!r}: expected mirror:N, parity:K+1 or ec:K+M")
        if match.group(1):
            return cls("mirror", 1, int(match.group(2)) - 1)
        return cls(match.group(3), int(match.group(4)), int(match.group(5)))

    @property
    def width(self) -> int:
        """How many members (regions on distinct appliances) a set of this scheme has."""
        return self.data_chunks + self.coding_chunks

    @property
    def tolerance(self) -> int:
        """How many members may be lost without losing data."""
        return self.coding_chunks

    def __str__(self) -> str:
        if self.kind == "mirror":
            return f"mirror:{self.width}"
        return f"{self.kind}:{self.data_chunks}+{self.coding_chunks}"
