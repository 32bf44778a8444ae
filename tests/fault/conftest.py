"""Helpers shared by the fault tests: appliances brought back between tests, writers killed
in the middle of their writes."""
import os
import signal
import subprocess
import sys

import pytest
import trio


@pytest.fixture
def apps(cluster):
    """The module's cluster's appliances, every one running (tests before may have killed
    some)."""
    for app in cluster.appliances:
        if not app.running:
            cluster.restart(app)
    return cluster.appliances


async def kill_writer_while_writing(script: str, *args: str) -> None:
    """Run ``script`` (Python source) with ``args`` in its own process; once it prints
    ``writing`` (within 30 s, else trio.TooSlowError), SIGKILL it. The script keeps writing
    after it says so, and a set ends a write intent only after its granule has been idle for
    a while (``IntentTracker.linger``), so the writes before the kill, whenever it lands,
    leave intents open for the next opener. The process is killed and reaped whatever
    happens."""
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE,
                            start_new_session=True)
    try:
        with trio.fail_after(30):
            line = await trio.to_thread.run_sync(proc.stdout.readline)
        assert line.strip() == b"writing"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
