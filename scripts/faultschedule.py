"""A fault schedule over a real resilfs mount: file operations mixed with faults, checked
against a model of what each file must hold (shared by tests/fault/test_fault_schedule.py
and scripts/soak.py; it imports nothing from tests/).

``Harness`` starts appliances (with persist dirs, one more than the scheme's width: a spare
for rebuilds), formats a filesystem with small sets and mounts it. Operations (``write``,
``truncate``, ``rename``, ``unlink``, ``mmap_write``, ``fsync``, ``snapshot``) act on the
mount and on the model; faults act on processes:

* ``appliance_down(kind, i)``: SIGKILL, SIGSTOP or SIGTERM appliance ``i``, fill its
  memory (``nospace``: a client takes what is free), or (``partition=True``, tcp: the
  appliances then run in network namespaces, scripts/netns_appliances.py) cut it off the
  network; ``appliance_up()`` ends it (restart with the same persist dir and reattach,
  SIGCONT, free the memory, or join the network again), waits until every set is healthy
  again, then ``check()``.
* ``crash_mount()``: SIGKILL the mount daemon, clear the dead mount, mount again, ``check()``.

The model of a file: ``current`` (what reads must return while the daemon lives), ``known``
(bytes whose value is certain: a write that failed with ENOSPC may have landed or not),
``durable`` + ``stable`` (the bytes fsync'd and not changed since: they survive a daemon
crash), and every write ever made to it (after a crash a byte must be zero or something
once written at its offset). Namespace changes are followed by an fsync of the directory,
so names are always durable; only data is at the mercy of a crash.

``check()``: every file reads back (page cache dropped first) as the model says, every
snapshot as its file was, scrub finds nothing wrong and ``fsck --online`` nothing at all
(both through the mount's xattrs, as the CLI does). Counts go to ``Harness.stats``; a
check that fails raises ``ScheduleFailure`` after counting. Every wait has a deadline.
``close()`` stops everything it started, by PID.
"""
import errno
import json
import mmap
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import trio

from resilfs.appliance.launcher import ApplianceLauncher
from resilfs.cli.fsck import check_online
from resilfs.fs import cluster as clusterfile
from resilfs.scheme import Scheme

from .netns_appliances import NetnsAppliances

MOUNT_TIMEOUT = 30.0
HEALTHY_TIMEOUT = 90.0
FILES = 4
MAX_SIZE = 384 * 1024
SNAPSHOTS_KEPT = 2
SCHEMES = {"mirror:2": "parallel", "parity:2+1": "sequential", "ec:4+2": "forward"}
FAULTS = ("kill", "stop", "term", "nospace")


class ScheduleFailure(AssertionError):
    """A check found a difference between the filesystem and the model."""


@dataclass
class Stats:
    ops: int = 0
    faults: int = 0
    fsyncs_checked: int = 0
    bytes_lost: int = 0
    bytes_wrong: int = 0
    errors: int = 0
    checks: int = 0
    messages: list = field(default_factory=list)

    def json(self, seconds: float) -> dict:
        return {"seconds": round(seconds, 1), "ops": self.ops, "faults": self.faults,
                "fsyncs_checked": self.fsyncs_checked, "bytes_lost": self.bytes_lost,
                "bytes_wrong": self.bytes_wrong, "errors": self.errors}


def pattern(seed: int, length: int) -> bytes:
    """Non-zero bytes from ``seed``: a write's data (zero is what holes read as)."""
    return np.random.default_rng(seed).integers(1, 256, length, dtype=np.uint8).tobytes()


class FileModel:
    def __init__(self):
        self.current = bytearray()
        self.known = np.zeros(0, dtype=bool)
        self.durable = b""
        self.stable = np.zeros(0, dtype=bool)
        self.writes: list[tuple[int, int, int]] = []  # (offset, length, seed) ever written
        self.adopted = b""  # the content taken as the model after a failed check (seed -1)
        self.fsyncs = 0

    def resize(self, size: int) -> None:
        old = len(self.current)
        if size < old:
            del self.current[size:]
            self.known = self.known[:size]
        else:
            self.current += bytes(size - old)
            self.known = np.concatenate([self.known, np.ones(size - old, dtype=bool)])
        lo = min(old, size)
        self.stable[lo:] = False

    def write(self, offset: int, data: bytes, seed: int, certain: bool = True) -> None:
        end = offset + len(data)
        if end > len(self.current):
            self.resize(end)
        self.current[offset:end] = data
        self.known[offset:end] = certain
        self.stable[offset:min(end, len(self.stable))] = False
        self.writes.append((offset, len(data), seed))

    def synced(self) -> None:
        self.durable = bytes(self.current)
        self.stable = self.known.copy()
        self.fsyncs += 1


class Harness:
    def __init__(self, scheme: str, write_mode: str | None = None, transport: str = "tcp",
                 workdir: str | None = None, seed: int = 0, log=None,
                 appliances: int | None = None, capacity: str = "96M",
                 partition: bool = False):
        self.scheme = scheme
        # appliances in network namespaces (tcp only), so that "partition" can cut one off
        self.partition = partition and transport == "tcp"
        self.faults = FAULTS + (("partition",) if self.partition else ())
        self.appliances = appliances  # default: the scheme's width and a spare
        self.capacity = capacity
        self.write_mode = write_mode or SCHEMES.get(scheme, "parallel")
        self.transport = transport
        self.own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="resilfs-faults-")
        self.mountpoint = tempfile.mkdtemp(prefix="resilfs-faults-mnt-")
        self.rng = random.Random(seed)
        self.log = log or (lambda message: None)
        self.stats = Stats()
        self.files: dict[str, FileModel] = {}
        self.snapshots: dict[str, tuple[str, bytes, np.ndarray]] = {}
        self.snapshot_count = 0
        self.fault: tuple[str, int] | None = None
        self.launcher: ApplianceLauncher | None = None
        self.mount_process: subprocess.Popen | None = None
        self._hog = None  # the region that fills an appliance during a "nospace" fault

    # -- setup and teardown ----------------------------------------------------------------
    def start(self) -> "Harness":
        width = Scheme.parse(self.scheme).width
        where = os.path.join(self.workdir, "appliances")
        self.launcher = NetnsAppliances(where) if self.partition else ApplianceLauncher(where)
        self.apps = self.launcher.start(self.appliances or max(width + 1, 3), persist=True,
                                        capacity=self.capacity)
        self.cluster = os.path.join(self.workdir, "cluster.toml")
        clusterfile.write(self.cluster, "faults", self.transport,
                          os.path.relpath(self.launcher.secret_file, self.workdir),
                          [a.address for a in self.apps])
        self._cli("mkfs", self.cluster, "--scheme", self.scheme, "--set-size", "4M",
                  "--chunk-size", "16K")
        self.mount()
        return self

    def _cli(self, *args: str, timeout: float = 120.0, check: bool = True):
        r = subprocess.run([sys.executable, "-m", "resilfs", *args], capture_output=True,
                           text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise ScheduleFailure(f"resilfs {' '.join(args)}: exit {r.returncode}: "
                                  f"{r.stdout}{r.stderr}")
        return r

    def mount(self) -> None:
        log_path = os.path.join(self.workdir, "mount.log")
        with open(log_path, "ab") as log:
            self.mount_process = subprocess.Popen(
                [sys.executable, "-m", "resilfs", "mount", "--foreground", self.cluster,
                 self.mountpoint, "--write-mode", self.write_mode],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not os.path.ismount(self.mountpoint):
            if self.mount_process.poll() is not None:
                raise ScheduleFailure(f"mount exited with {self.mount_process.returncode}:\n"
                                      + self.mount_log())
            if time.monotonic() > deadline:
                raise ScheduleFailure("mount did not appear in time:\n" + self.mount_log())
            time.sleep(0.02)

    def mount_log(self, lines: int = 40) -> str:
        try:
            with open(os.path.join(self.workdir, "mount.log"), errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def _unmount(self, lazy: bool = False) -> None:
        if os.path.ismount(self.mountpoint):
            subprocess.run(["fusermount3", "-u", *(["-z"] if lazy else []), self.mountpoint],
                           capture_output=True, timeout=30)
        if self.mount_process is not None and self.mount_process.poll() is None:
            try:
                self.mount_process.wait(30)
            except subprocess.TimeoutExpired:
                self.mount_process.kill()
                self.mount_process.wait()

    def close(self) -> None:
        """Stop everything started here (mount daemon, appliances), remove temp dirs."""
        for app in self.apps if self.launcher else ():
            if app.running:
                try:
                    os.kill(app.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        try:
            self._unmount()
        finally:
            if os.path.ismount(self.mountpoint):
                self._unmount(lazy=True)
            if self.mount_process is not None and self.mount_process.poll() is None:
                self.mount_process.kill()
                self.mount_process.wait()
            if self.launcher is not None:
                self.launcher.close()
            if not os.path.ismount(self.mountpoint):
                os.rmdir(self.mountpoint)
            if self.own_workdir:
                subprocess.run(["rm", "-rf", self.workdir], check=False)

    # -- operations ----------------------------------------------------------------------
    def path(self, name: str) -> str:
        return os.path.join(self.mountpoint, name)

    def _sync_dir(self) -> None:
        fd = os.open(self.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _op(self, what: str) -> None:
        self.stats.ops += 1
        self.log(what)

    def _expected_error(self, exc: OSError, what: str) -> None:
        """ENOSPC is an answer while an appliance is full; anything else is an error."""
        if exc.errno == errno.ENOSPC and self.fault is not None and self.fault[0] == "nospace":
            return
        self.stats.errors += 1
        raise ScheduleFailure(f"{what}: {exc}\n{self.mount_log()}") from exc

    def write(self, name: str, offset: int, length: int, seed: int) -> None:
        self._op(f"write {name} {offset}+{length}")
        model = self.files.get(name)
        data = pattern(seed, length)
        try:
            fd = os.open(self.path(name), os.O_WRONLY | os.O_CREAT, 0o644)
        except OSError as exc:
            return self._expected_error(exc, f"create {name}")
        if model is None:
            model = self.files[name] = FileModel()
            self._sync_dir()
        try:
            done = os.pwrite(fd, data, offset)
            model.write(offset, data[:done], seed)
            if done < length:
                raise OSError(errno.EIO, f"short write: {done} of {length}")
        except OSError as exc:
            model.write(offset, data, seed, certain=False)
            self._expected_error(exc, f"write {name}")
        finally:
            os.close(fd)

    def mmap_write(self, name: str, offset: int, length: int, seed: int) -> None:
        model = self.files.get(name)
        if model is None or not model.current:
            return self.write(name, offset, length, seed)
        self._op(f"mmap write {name} {offset}+{length}")
        size = len(model.current)
        offset %= size
        length = max(1, min(length, size - offset))
        data = pattern(seed, length)
        fd = os.open(self.path(name), os.O_RDWR)
        try:
            with mmap.mmap(fd, size) as m:
                m[offset:offset + length] = data
        finally:
            os.close(fd)
        model.write(offset, data, seed)

    def truncate(self, name: str, size: int) -> None:
        model = self.files.get(name)
        if model is None:
            return
        self._op(f"truncate {name} {size}")
        try:
            os.truncate(self.path(name), size)
        except OSError as exc:
            return self._expected_error(exc, f"truncate {name}")
        model.resize(size)

    def fsync(self, name: str) -> None:
        model = self.files.get(name)
        if model is None:
            return
        self._op(f"fsync {name}")
        fd = os.open(self.path(name), os.O_RDONLY)
        try:
            os.fsync(fd)
        except OSError as exc:
            return self._expected_error(exc, f"fsync {name}")
        finally:
            os.close(fd)
        model.synced()

    def rename(self, name: str, new: str) -> None:
        if name not in self.files or name == new:
            return
        self._op(f"rename {name} {new}")
        os.rename(self.path(name), self.path(new))
        self._sync_dir()
        self.files[new] = self.files.pop(name)

    def unlink(self, name: str) -> None:
        if name not in self.files:
            return
        self._op(f"unlink {name}")
        os.unlink(self.path(name))
        self._sync_dir()
        del self.files[name]

    def snapshot(self, name: str) -> None:
        model = self.files.get(name)
        if model is None:
            return
        self.snapshot_count += 1
        snap = f"s{self.snapshot_count}"
        self._op(f"snapshot {name} as {snap}")
        try:
            os.setxattr(self.path(name), "user.resilfs.snapshot", snap.encode())
        except OSError as exc:
            return self._expected_error(exc, f"snapshot {name}")
        self.snapshots[snap] = (name, bytes(model.current), model.known.copy())
        while len(self.snapshots) > SNAPSHOTS_KEPT and self.fault is None:
            old = min(self.snapshots, key=lambda s: int(s[1:]))
            os.setxattr(self.mountpoint, "user.resilfs.snapshot.delete", old.encode())
            del self.snapshots[old]

    def check_names(self) -> None:
        """The directory lists exactly the model's files (and ``.snapshots``)."""
        self._op("list")
        names = set(os.listdir(self.mountpoint)) - {".snapshots"}
        if names != set(self.files):
            self.stats.errors += 1
            raise ScheduleFailure(f"names {sorted(names)}, expected {sorted(self.files)}")

    def adopt_files(self) -> None:
        """After a failed check (the soak goes on): the fault ends, the filesystem is
        mounted again, a scrub repairs what it finds (so that later checks count only new
        damage), and the files as they are become the model (files that cannot be read
        are removed, with an error counted each)."""
        kind, index = self.fault or (None, 0)
        if kind in ("kill", "term"):
            self.launcher.restart(self.apps[index])
        elif kind == "stop":
            os.kill(self.apps[index].pid, signal.SIGCONT)
        elif kind == "nospace":
            trio.run(self._free, self._hog)
        elif kind == "partition":
            self.launcher.heal(self.apps[index])
        self.fault = None
        self._unmount()
        if os.path.ismount(self.mountpoint):
            self._unmount(lazy=True)
        self.mount()
        self.wait_healthy()
        self.scrub(repair=True)
        self.files = {}
        for name in sorted(set(os.listdir(self.mountpoint)) - {".snapshots"}):
            try:
                got = self._read(self.path(name))
            except OSError as exc:
                self.stats.errors += 1
                self.log(f"{name} unreadable ({exc}): removed")
                os.unlink(self.path(name))
                continue
            model = self.files[name] = FileModel()
            model.current = bytearray(got)
            model.known = np.ones(len(got), dtype=bool)
            model.adopted = got
            model.writes.append((0, len(got), -1))  # what it holds counts as written
            model.synced()
            model.fsyncs = 0
        self.snapshots = {}

    def random_op(self) -> None:
        """One operation chosen by ``self.rng`` (for the soak); an unexpected OSError is
        counted and raised as ScheduleFailure."""
        try:
            self._random_op()
        except OSError as exc:
            self.stats.errors += 1
            raise ScheduleFailure(f"{exc}\n{self.mount_log()}") from exc

    def _random_op(self) -> None:
        r = self.rng
        name = f"f{r.randrange(FILES)}"
        kind = r.choices(["write", "mmap", "truncate", "fsync", "rename", "unlink",
                          "snapshot"], weights=[10, 3, 2, 4, 1, 1, 1])[0]
        offset = r.randrange(MAX_SIZE)
        length = r.choice([1, 100, 4096, 5000, 65536, 100000])
        length = min(length, MAX_SIZE - offset) or 1
        if kind == "write":
            self.write(name, offset, length, r.getrandbits(32))
        elif kind == "mmap":
            self.mmap_write(name, offset, length, r.getrandbits(32))
        elif kind == "truncate":
            self.truncate(name, r.randrange(MAX_SIZE))
        elif kind == "fsync":
            self.fsync(name)
        elif kind == "rename":
            self.rename(name, f"f{r.randrange(FILES)}")
        elif kind == "unlink":
            self.unlink(name)
        else:
            self.snapshot(name)

    # -- faults ----------------------------------------------------------------------------
    def appliance_down(self, kind: str, index: int) -> None:
        """Start a fault, once every set is healthy: one failure at a time is what the
        schemes tolerate (a mirror snapshot leaves its set degraded until rebuilt)."""
        assert self.fault is None
        self.wait_healthy()
        index %= len(self.apps)
        app = self.apps[index]
        self.stats.faults += 1
        self.log(f"fault: {kind} appliance {index}")
        if kind == "kill":
            self.launcher.kill(app)
        elif kind == "term":
            self.launcher.stop(app)
        elif kind == "stop":
            os.kill(app.pid, signal.SIGSTOP)
        elif kind == "nospace":
            self._hog = trio.run(self._fill, app.address)
        elif kind == "partition":
            self.launcher.cut(app)
        self.fault = (kind, index)

    async def _fill(self, address: str):
        """Take the free memory of the appliance at ``address`` with a region of another
        owner; returns the region handle (freed by ``appliance_up``)."""
        from resilfs.transport import connect
        secret = self.launcher.secret
        async with await connect(address, transport=self.transport, secret=secret) as client:
            st = await client.stat()
            free = max(st.capacity - st.used - 4096, 4096)
            return await client.alloc(free, "faults-hog")

    async def _free(self, handle) -> None:
        from resilfs.transport import connect
        async with await connect(handle.appliance, transport=self.transport,
                                 secret=self.launcher.secret) as client:
            await client.free(handle)

    def appliance_up(self) -> None:
        assert self.fault is not None
        kind, index = self.fault
        app = self.apps[index]
        self.log(f"recover: {kind} appliance {index}")
        if kind in ("kill", "term"):
            self.launcher.restart(app)
        elif kind == "stop":
            os.kill(app.pid, signal.SIGCONT)
        elif kind == "nospace":
            trio.run(self._free, self._hog)
            self._hog = None
        elif kind == "partition":
            self.launcher.heal(app)
        self.fault = None
        self.wait_healthy()
        self.check()

    def crash_mount(self) -> None:
        self.stats.faults += 1
        self.log("fault: SIGKILL the mount daemon")
        self.mount_process.kill()
        self.mount_process.wait()
        subprocess.run(["fusermount3", "-u", "-z", self.mountpoint], capture_output=True,
                       timeout=30)
        self.mount()
        self.check(after_crash=True)

    def scrub(self, repair: bool = False) -> dict:
        """``resilfs scrub [--repair]``: start a scrub of every set, wait for its report."""
        os.setxattr(self.mountpoint, "user.resilfs.scrub", b"repair" if repair else b"check")
        deadline = time.monotonic() + HEALTHY_TIMEOUT
        while not (scrub := self.status()["scrub"])["finished"]:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        return scrub

    def status(self) -> dict:
        return json.loads(os.getxattr(self.mountpoint, "user.resilfs.status"))

    def wait_healthy(self, timeout: float = HEALTHY_TIMEOUT) -> None:
        """Until every data set and every snapshot is healthy (a mirror snapshot is a single
        copy until rebuilt; the pool reconnects to an appliance that no set uses only when
        it next needs it, so appliances are not waited for)."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            snaps = json.loads(os.getxattr(self.mountpoint, "user.resilfs.snapshots"))
            if (all(s["state"] == "healthy" for s in st["sets"])
                    and all(s["health"] == "healthy" for s in snaps)):
                return
            if time.monotonic() > deadline:
                self.stats.errors += 1
                raise ScheduleFailure(f"sets not healthy after {timeout} s: "
                                      f"{json.dumps(st['sets'])}, snapshots "
                                      f"{json.dumps(snaps)}\n{self.mount_log()}")
            time.sleep(0.1)

    # -- checks ----------------------------------------------------------------------------
    def _read(self, path: str) -> bytes:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            out = bytearray()
            while chunk := os.read(fd, 1 << 20):
                out += chunk
            return bytes(out)
        finally:
            os.close(fd)

    def check(self, after_crash: bool = False) -> None:
        """Compare every file and snapshot with the model, then scrub and fsck."""
        self.stats.checks += 1
        problems = []
        names = set(os.listdir(self.mountpoint)) - {".snapshots"}
        if names != set(self.files):
            problems.append(f"names {sorted(names)}, expected {sorted(self.files)}")
        for name, model in sorted(self.files.items()):
            if name not in names:
                continue
            try:
                got = self._read(self.path(name))
            except OSError as exc:
                problems.append(f"file {name}: {exc}")
                continue
            if after_crash:
                problems += self._check_crashed(name, model, got)
                model.current = bytearray(got)  # what the file holds from now on
                model.known = np.ones(len(got), dtype=bool)
                model.synced()
            else:
                problems += self._check_exact(name, model, got)
            self.stats.fsyncs_checked += model.fsyncs
            model.fsyncs = 0
        for snap, (name, content, known) in sorted(self.snapshots.items()):
            try:
                got = self._read(os.path.join(self.mountpoint, ".snapshots", snap))
            except OSError as exc:
                problems.append(f"snapshot {snap} of {name}: {exc}")
                continue
            problems += self._compare(f"snapshot {snap} of {name}", content, known, got)
        scrub = self.scrub()
        if not scrub["finished"] or scrub["mismatched"] or scrub["unchecked"] \
                or scrub["errors"]:
            problems.append(f"scrub: {json.dumps(scrub)}")
        fsck = check_online(self.mountpoint)
        problems += [f"fsck: {line}" for line in fsck.problems + fsck.unchecked]
        if problems:
            self.stats.errors += len(problems)
            self.stats.messages += problems
            raise ScheduleFailure("\n".join(problems))

    def _compare(self, what: str, content: bytes, known: np.ndarray, got: bytes) -> list:
        if len(got) != len(content):
            self.stats.bytes_lost += max(len(content) - len(got), 0)
            self.stats.bytes_wrong += max(len(got) - len(content), 0)
            return [f"{what}: {len(got)} bytes, expected {len(content)}"]
        a = np.frombuffer(got, dtype=np.uint8)
        b = np.frombuffer(content, dtype=np.uint8)
        bad = (a != b) & known
        if bad.any():
            self.stats.bytes_wrong += int(bad.sum())
            return [f"{what}: {int(bad.sum())} bytes differ, first at {int(bad.argmax())}"]
        return []

    def _check_exact(self, name: str, model: FileModel, got: bytes) -> list:
        problems = self._compare(f"file {name}", bytes(model.current), model.known, got)
        if not problems:
            return []
        return problems + self._never_written(name, model, got)

    def _check_crashed(self, name: str, model: FileModel, got: bytes) -> list:
        """After a crash: the stable bytes as fsync'd; any byte zero or once written there."""
        problems = []
        a = np.frombuffer(got, dtype=np.uint8)
        stable_end = int(np.flatnonzero(model.stable)[-1]) + 1 if model.stable.any() else 0
        if len(got) < stable_end:
            lost = int(model.stable[len(got):].sum())
            self.stats.bytes_lost += lost
            problems.append(f"file {name}: {len(got)} bytes after the crash, but {lost} "
                            f"fsync'd bytes were past that")
        n = min(len(got), len(model.durable))
        durable = np.frombuffer(model.durable[:n], dtype=np.uint8)
        bad = (a[:n] != durable) & model.stable[:n]
        if bad.any():
            self.stats.bytes_lost += int(bad.sum())
            problems.append(f"file {name}: {int(bad.sum())} fsync'd bytes changed by the "
                            f"crash, first at {int(bad.argmax())}")
        return problems + self._never_written(name, model, got)

    def _never_written(self, name: str, model: FileModel, got: bytes) -> list:
        a = np.frombuffer(got, dtype=np.uint8)
        ok = a == 0
        for offset, length, seed in model.writes:
            if offset >= len(a):
                continue
            end = min(offset + length, len(a))
            if seed < 0:  # adopted after a failed check: the content as it was then
                data = np.frombuffer(model.adopted[offset:end], dtype=np.uint8)
                ok[offset:offset + len(data)] |= a[offset:offset + len(data)] == data
                continue
            data = np.frombuffer(pattern(seed, length)[:end - offset], dtype=np.uint8)
            ok[offset:end] |= a[offset:end] == data
        if ok.all():
            return []
        self.stats.bytes_wrong += int((~ok).sum())
        return [f"file {name}: {int((~ok).sum())} bytes were never written there, first at "
                f"{int((~ok).argmax())}"]

    def random_fault(self) -> None:
        """Start or end a fault, or crash the mount, chosen by ``self.rng`` (for the soak)."""
        if self.fault is not None:
            return self.appliance_up()
        if self.rng.random() < 0.25:
            return self.crash_mount()
        self.appliance_down(self.rng.choice(self.faults), self.rng.randrange(len(self.apps)))
