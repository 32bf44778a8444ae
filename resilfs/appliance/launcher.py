"""Start, stop, kill and restart local appliance processes (tests, benchmarks, ``resilfs up``).

Usage: ``with ApplianceLauncher(workdir) as launcher:`` creates ``workdir/secret`` (mode
0600; ``launcher.secret`` holds its bytes, ``launcher.secret_file`` its path), then
``apps = launcher.start(3, persist=True, capacity="256M")`` starts three
``python -m resilfs appliance`` processes on free loopback ports and returns once each
accepts connections (``ApplianceProcess``: ``.address`` "127.0.0.1:PORT", ``.port``,
``.pid``, ``.persist_dir``, ``.log_path``). Connect with
``resilfs.transport.connect(app.address, secret=launcher.secret)``.
``launcher.kill(app)`` sends SIGKILL and reaps it (fault tests), ``launcher.restart(app)``
starts it again on the same port with the same persist dir and waits until it is serving,
``launcher.stop(app)`` sends SIGTERM and SIGKILL after a timeout, and leaving the ``with``
block (or ``launcher.close()``) stops every process it started, by PID. All calls block (they
are quick: an appliance starts in well under a second) and raise ``LauncherError`` with the
tail of the appliance's log when a process dies or does not come up within its timeout.
"""
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from ..auth import write_secret
from ..errors import ResilfsError
from ..protocol import HEADER_SIZE

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0  # seconds for an appliance to start accepting connections
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL


class LauncherError(ResilfsError):
    """An appliance process did not start, or died while starting."""


@dataclass
class ApplianceProcess:
    index: int
    port: int
    persist_dir: str | None
    log_path: str
    args: list[str]
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def free_port() -> int:
    """A tcp port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ApplianceLauncher:
    """Local appliance processes sharing one secret; every one is stopped by ``close()``."""

    def __init__(self, workdir: str, *, python: str = sys.executable):
        self.workdir = str(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.secret_file = os.path.join(self.workdir, "secret")
        if os.path.exists(self.secret_file):
            with open(self.secret_file, "rb") as f:
                self.secret = f.read().strip()
        else:
            self.secret = write_secret(self.secret_file)
        self.python = python
        self.appliances: list[ApplianceProcess] = []

    def __enter__(self) -> "ApplianceLauncher":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- starting ------------------------------------------------------------------
    def start(self, count: int = 1, *, capacity: str = "256M", persist: bool = False,
              persist_root: str | None = None, extra_args: tuple[str, ...] = (),
              timeout: float = START_TIMEOUT) -> list[ApplianceProcess]:
        """Start ``count`` appliances and wait until each accepts connections.

        With ``persist`` each gets ``persist_root/appliance-N`` (default root: the workdir)
        as its persist dir. On failure, the ones started by this call are stopped again.
        """
        started = []
        try:
            for _ in range(count):
                index = len(self.appliances)
                persist_dir = (os.path.join(persist_root or self.workdir, f"appliance-{index}")
                               if persist else None)
                app = ApplianceProcess(
                    index=index, port=0, persist_dir=persist_dir,
                    log_path=os.path.join(self.workdir, f"appliance-{index}.log"),
                    args=["--capacity", capacity, "--secret-file", self.secret_file,
                          *(["--persist-dir", persist_dir] if persist_dir else []),
                          *extra_args])
                self.appliances.append(app)
                started.append(app)
                for attempt in range(3):  # another process may grab a free port first
                    app.port = free_port()
                    self._spawn(app)
                    try:
                        self._wait_ready(app, timeout)
                        break
                    except LauncherError:
                        if app.running or attempt == 2 or "in use" not in self._log_tail(app):
                            raise
        except BaseException:
            for app in started:
                self.stop(app)
            raise
        return started

    def _spawn(self, app: ApplianceProcess) -> None:
        with open(app.log_path, "ab") as log_file:
            app.process = subprocess.Popen(
                [self.python, "-m", "resilfs", "appliance", "--listen", app.address, *app.args],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                start_new_session=True)
        log.info("started appliance %d (pid %d) on %s", app.index, app.pid, app.address)

    def _log_tail(self, app: ApplianceProcess, lines: int = 5) -> str:
        try:
            with open(app.log_path, errors="replace") as f:
                return " | ".join(f.read().strip().splitlines()[-lines:])
        except OSError:
            return ""

    def _wait_ready(self, app: ApplianceProcess, timeout: float) -> None:
        """Poll until the appliance greets a tcp connection; LauncherError if it dies."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            if not app.running:
                code = app.process.wait()
                raise LauncherError(f"appliance {app.index} on {app.address} exited with "
                                    f"code {code}: {self._log_tail(app)}")
            try:
                with socket.create_connection(("127.0.0.1", app.port), timeout=1.0) as s:
                    if len(s.recv(HEADER_SIZE, socket.MSG_WAITALL)) == HEADER_SIZE:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop(app)
                raise LauncherError(f"appliance {app.index} on {app.address} did not accept "
                                    f"connections within {timeout} s: {self._log_tail(app)}")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    # -- stopping ------------------------------------------------------------------
    def stop(self, app: ApplianceProcess, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` s; return the exit code (None if not run)."""
        if app.process is None:
            return None
        if app.process.poll() is None:
            app.process.send_signal(signal.SIGTERM)
            try:
                app.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("appliance %d (pid %d) ignored SIGTERM; killing it", app.index,
                            app.pid)
                app.process.kill()
                app.process.wait()
        return app.process.returncode

    def kill(self, app: ApplianceProcess) -> None:
        """SIGKILL the appliance (a crash, for fault tests) and reap it."""
        if app.running:
            app.process.kill()
        app.process.wait()
        log.info("killed appliance %d (pid %d)", app.index, app.pid)

    def restart(self, app: ApplianceProcess, timeout: float = START_TIMEOUT) -> None:
        """Start a stopped or killed appliance again: same port, persist dir and arguments."""
        if app.running:
            self.stop(app)
        self._spawn(app)
        self._wait_ready(app, timeout)

    def close(self) -> None:
        """Stop every appliance this launcher started."""
        for app in self.appliances:
            try:
                self.stop(app)
            except Exception:  # keep stopping the others
                log.exception("could not stop appliance %d (pid %s)", app.index, app.pid)
