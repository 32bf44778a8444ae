"""Journal records: what changed in the namespace, as compact binary.

A record is a tuple ``(op, field, ...)``. Each op has a fixed field layout (``LAYOUTS``):
``Q`` unsigned 64-bit, ``q`` signed 64-bit, ``I`` unsigned 32-bit, ``B`` bytes, ``N`` bytes or
None. Integers are little-endian; bytes are a u32 length then the bytes (``N`` uses length
0xFFFFFFFF for None). A batch is the records concatenated; a record starts with its op byte.

The same records make up checkpoints (``FORMAT``, ``INODE``, ``DIRENT``, ``XATTR``, ``MAP``,
``SET``, ``NEXT``), so that a checkpoint is replayed by the same apply function as the journal.
Decoding raises CorruptRecord on anything malformed and never returns a partial batch.
"""
import struct
from enum import IntEnum

from ..errors import ResilfsError


class CorruptRecord(ResilfsError):
    """A journal batch or checkpoint does not decode: the metadata is damaged."""


class Op(IntEnum):
    INODE = 1    # ino, mode, uid, gid, rdev, size, atime, mtime, ctime, nlink, symlink target
    DIRENT = 2   # parent, name, ino: raw directory entry (checkpoints)
    LINK = 3     # parent, name, ino, time: new name for an inode
    UNLINK = 4   # parent, name, time: remove a name (the inode stays until DELETE)
    RENAME = 5   # old parent, old name, new parent, new name, time (replaces the target)
    SETATTR = 6  # ino, mask, mode, uid, gid, size, atime, mtime, ctime (mask says which)
    WRITTEN = 7  # ino, size, time: data was written; size grows to at least ``size``
    XATTR = 8    # ino, name, value (None removes)
    MAP = 9      # ino, file offset, length, set id, offset in set
    DELETE = 10  # ino: the inode and its extents are gone
    SET = 11     # set id, size: a new backing resiliency set
    NEXT = 12    # next inode number (checkpoints)
    FORMAT = 13  # scheme, chunk size, set size, codec backend: how new data sets are made
    SNAPSET = 14  # set id, size, snapshot id: a read-only set holding a snapshot's data
    SNAPSHOT = 15  # id, name, time, source ino, top ino, first ino, last ino, bytes, sources
    UNSNAPSHOT = 16  # snapshot id: the snapshot and its sets are gone (inodes DELETEd before)
    SNAPSET_RECORD = 17  # snapshot set id, source set id, its membership record as taken
    PUNCH = 18  # ino, file offset, length: unmap a page-aligned range (a hole; space freed)


LAYOUTS = {
    Op.INODE: "QIIIQQqqqIN",
    Op.DIRENT: "QBQ",
    Op.LINK: "QBQq",
    Op.UNLINK: "QBq",
    Op.RENAME: "QBQBq",
    Op.SETATTR: "QIIIIQqqq",
    Op.WRITTEN: "QQq",
    Op.XATTR: "QBN",
    Op.MAP: "QQQQQ",
    Op.DELETE: "Q",
    Op.SET: "QQ",
    Op.NEXT: "Q",
    Op.FORMAT: "BQQB",
    Op.SNAPSET: "QQQ",
    Op.SNAPSHOT: "QBqQQQQQB",
    Op.UNSNAPSHOT: "Q",
    Op.SNAPSET_RECORD: "QQB",
    Op.PUNCH: "QQQ",
}

# SETATTR mask bits
ATTR_MODE, ATTR_UID, ATTR_GID, ATTR_SIZE, ATTR_ATIME, ATTR_MTIME, ATTR_CTIME = (
    1, 2, 4, 8, 16, 32, 64)

_NONE = 0xFFFFFFFF
_U32 = struct.Struct("<I")
_OP = struct.Struct("<B")
_FIXED = {"Q": struct.Struct("<Q"), "q": struct.Struct("<q"), "I": _U32}

#: the ranges of the fixed-size kinds (q, Q, I): a value outside them cannot be stored
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1
U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1


def encode(records) -> bytes:
    """Encode records into one batch; raises CorruptRecord for a record that does not fit."""
    out = bytearray()
    for record in records:
        encode_one(record, out)
    return bytes(out)


def encode_one(record, out: bytearray | None = None) -> bytes | bytearray:
    """Encode one record (appended to ``out`` if given, which is returned); raises
    CorruptRecord, with ``out`` unchanged, for a record that does not fit its layout."""
    if out is None:
        return bytes(encode_one(record, bytearray()))
    mark = len(out)
    try:
        _encode_one(record, out)
    except (struct.error, KeyError, TypeError, ValueError, IndexError) as exc:
        del out[mark:]
        raise CorruptRecord(f"cannot encode record {record!r}: {exc}") from None
    return out


def _encode_one(record, out: bytearray) -> None:
    op = Op(record[0])
    layout = LAYOUTS[op]
    if len(record) != len(layout) + 1:
        raise ValueError(f"{op.name} takes {len(layout)} fields")
    out += _OP.pack(op)
    for kind, value in zip(layout, record[1:], strict=True):
        if kind in _FIXED:
            out += _FIXED[kind].pack(value)
        elif value is None:
            if kind != "N":
                raise ValueError("None where bytes are required")
            out += _U32.pack(_NONE)
        else:
            if len(value) >= _NONE:
                raise ValueError("bytes field too long")
            out += _U32.pack(len(value))
            out += value


def decode(batch) -> list[tuple]:
    """Decode a batch into records; raises CorruptRecord if any byte is out of place."""
    view = memoryview(batch)
    records = []
    pos = 0
    try:
        while pos < len(view):
            op = Op(view[pos])
            pos += 1
            record = [op]
            for kind in LAYOUTS[op]:
                if kind in _FIXED:
                    fmt = _FIXED[kind]
                    record.append(fmt.unpack_from(view, pos)[0])
                    pos += fmt.size
                    continue
                (length,) = _U32.unpack_from(view, pos)
                pos += 4
                if length == _NONE and kind == "N":
                    record.append(None)
                    continue
                if pos + length > len(view):
                    raise ValueError("bytes field runs past the end")
                record.append(bytes(view[pos:pos + length]))
                pos += length
            records.append(tuple(record))
    except (struct.error, ValueError) as exc:
        raise CorruptRecord(f"malformed batch at byte {pos}: {exc}") from None
    return records
