"""FUSE_FALLOCATE, which pyfuse3 (3.5) does not dispatch: a handler added to its session.

pyfuse3 hands libfuse a table of request handlers (``struct fuse_lowlevel_ops``) without
a ``fallocate`` entry, so libfuse answers ENOSYS and the kernel stops asking (every
fallocate(2) then fails with EOPNOTSUPP, and posix_fallocate(3) writes zeros itself).
``FallocateHook.install`` runs after ``pyfuse3.init`` and before ``pyfuse3.main``: it finds
pyfuse3's table in the session libfuse made (a copy of pyfuse3's own, found through the
symbols of pyfuse3's extension module) and sets the ``fallocate`` entry to a ctypes
callback. libfuse calls it from ``pyfuse3.main``'s trio task, inside request processing;
the callback starts ``handler(ino, mode, offset, length)`` in the mount's nursery and
returns, and that task answers the request with ``fuse_reply_err``: 0, or the errno of
the ``pyfuse3.FUSEError`` it raised (EIO for anything else, logged).

If the table cannot be found (another pyfuse3 or libfuse build), ``install`` logs why and
returns False: fallocate stays unsupported, nothing else changes.
"""
import ctypes
import errno
import logging
import os
import struct

import pyfuse3

log = logging.getLogger(__name__)

_OPS_SYMBOL = b"__pyx_v_7pyfuse3_fuse_ops"
_SESSION_SYMBOL = b"__pyx_v_7pyfuse3_session"
_OPS_ENTRIES = 44  # struct fuse_lowlevel_ops of libfuse 3.14: init ... lseek
_FALLOCATE = 40  # its index of fallocate (a stable ABI)
_SEARCH = 512  # bytes of struct fuse_session searched for the table (3.14: at 32)

_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int,
                             ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)


def _symbols(path: str, names) -> dict[bytes, int]:
    """Values of the named symbols in the ELF64 (little-endian) symbol table of ``path``."""
    with open(path, "rb") as f:
        elf = f.read()
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError(f"{path} is not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", elf, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize)
                for i in range(shnum)]
    found = {}
    for _name, kind, _flags, _addr, offset, size, link, _info, _align, entsize in sections:
        if kind != 2:  # SHT_SYMTAB
            continue
        strtab = sections[link][4]
        for pos in range(offset, offset + size, entsize):
            st_name, _info, _other, _shndx, value, _size = struct.unpack_from(
                "<IBBHQQ", elf, pos)
            end = elf.index(b"\0", strtab + st_name)
            name = elf[strtab + st_name:end]
            if name in names:
                found[name] = value
    return found


def _load_base(path: str) -> int:
    """Where ``path`` is mapped in this process (its mapping at file offset 0)."""
    real = os.path.realpath(path)
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 6 and fields[5] == real and int(fields[2], 16) == 0:
                return int(fields[0].split("-")[0], 16)
    raise ValueError(f"{path} is not mapped")


class FallocateHook:
    """Serves FUSE_FALLOCATE with ``handler`` (see the module docstring); ``nursery`` must
    be set before ``pyfuse3.main`` runs."""

    def __init__(self, handler):
        self.handler = handler
        self.nursery = None
        self._callback = _CALLBACK(self._request)  # kept alive while libfuse may call it
        self._reply_err = None

    def install(self) -> bool:
        """Add the handler to the session of ``pyfuse3.init``; False (logged) if the
        session's table cannot be found."""
        try:
            path = pyfuse3.__file__
            symbols = _symbols(path, {_OPS_SYMBOL, _SESSION_SYMBOL})
            base = _load_base(path)
            table = ctypes.string_at(base + symbols[_OPS_SYMBOL], 8 * _OPS_ENTRIES)
            session = ctypes.c_void_p.from_address(base + symbols[_SESSION_SYMBOL]).value
            if not session:
                raise ValueError("pyfuse3 has no session (call after pyfuse3.init)")
            at = ctypes.string_at(session, _SEARCH).find(table)
            if at < 0 or at % 8:
                raise ValueError("pyfuse3's handler table is not in its session")
            slot = ctypes.c_void_p.from_address(session + at + 8 * _FALLOCATE)
            if slot.value:
                raise ValueError("the session has a fallocate handler already")
            libfuse = ctypes.CDLL("libfuse3.so.3")
            self._reply_err = libfuse.fuse_reply_err
            self._reply_err.argtypes = [ctypes.c_void_p, ctypes.c_int]
            slot.value = ctypes.cast(self._callback, ctypes.c_void_p).value
        except (OSError, ValueError, KeyError, struct.error) as exc:
            log.warning("fallocate stays unsupported: %s", exc)
            return False
        return True

    def _request(self, req, ino, mode, offset, length, _fi) -> None:
        """libfuse's callback: start the handler; never raises (it would be lost)."""
        try:
            self.nursery.start_soon(self._serve, req, ino, mode, offset, length)
        except Exception:
            log.exception("fallocate(%d) could not start", ino)
            self._reply_err(req, errno.EIO)

    async def _serve(self, req, ino, mode, offset, length) -> None:
        """Run the handler and answer; cancelled (unmount), it answers EIO."""
        code = errno.EIO
        try:
            await self.handler(ino, mode, offset, length)
            code = 0
        except pyfuse3.FUSEError as exc:
            code = exc.errno
        except Exception:
            log.exception("fallocate(%d, %d, %d, %d) failed", ino, mode, offset, length)
        finally:
            self._reply_err(req, code)
