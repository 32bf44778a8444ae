"""Pytest fixtures that run real appliance processes. In a conftest.py:

    from tests.appliances import appliance, appliances, launcher, secret  # noqa: F401

or in a test module (an assignment, so ruff does not see fixture arguments as redefinitions):

    from tests import appliances
    launcher, appliance = appliances.launcher, appliances.appliance  # fixtures

``launcher``: an ``ApplianceLauncher`` in a temporary dir, nothing started yet; every process
it starts is stopped (by PID) when the test ends, pass or fail. ``appliance``: one running
appliance with a persist dir (an ``ApplianceProcess``: ``.address``, ``.pid``, ...).
``appliances``: three running appliances with persist dirs. ``secret``: the cluster secret
bytes those appliances share (``launcher.secret``).

``module_cluster(count, **options)`` makes a module-scoped fixture: one launcher with
``count`` appliances started (``options`` as for ``ApplianceLauncher.start``), shared by the
module's tests and stopped after the last one. ``open_pool``: ``await open_pool(launcher)``
(or ``addresses=``, ``transport=``, ``connect=``) opens an ``AppliancePool`` on the
launcher's appliances that is closed when the test ends, pass or fail. ``await
kill(launcher, address)`` SIGKILLs one of its appliances and reaps it.
"""
import functools

import pytest
import trio

from resilfs.appliance.launcher import ApplianceLauncher
from resilfs.sets import AppliancePool
from resilfs.transport import connect as connect_appliance


@pytest.fixture
def launcher(tmp_path):
    with ApplianceLauncher(tmp_path / "appliances") as launcher:
        yield launcher


@pytest.fixture
def secret(launcher) -> bytes:
    return launcher.secret


@pytest.fixture
def appliance(launcher):
    return launcher.start(1, persist=True)[0]


@pytest.fixture
def appliances(launcher):
    return launcher.start(3, persist=True)


def module_cluster(count: int, **options):
    """A module-scoped fixture: an ``ApplianceLauncher`` with ``count`` appliances started
    with ``options``; every process it started is stopped after the module, pass or fail."""
    @pytest.fixture(scope="module")
    def cluster(tmp_path_factory):
        with ApplianceLauncher(tmp_path_factory.mktemp("cluster")) as launcher:
            launcher.start(count, **options)
            yield launcher
    return cluster


@pytest.fixture
async def open_pool():
    pools: list[AppliancePool] = []

    async def open_(launcher: ApplianceLauncher, transport: str = "tcp", *,
                    addresses=None, connect=None, timeout: float = 1.0) -> AppliancePool:
        """A pool on ``addresses`` (default: all the launcher's appliances), connecting
        with ``connect`` (default: ``transport`` with the launcher's secret)."""
        if addresses is None:
            addresses = [a.address for a in launcher.appliances]
        if connect is None:
            connect = functools.partial(connect_appliance, transport=transport,
                                        secret=launcher.secret, timeout=timeout)
        pool = await AppliancePool.create(addresses, connect, retry_interval=0.1)
        pools.append(pool)
        return pool

    yield open_
    for pool in reversed(pools):  # a pool closed already has nothing left to close
        await pool.aclose()


async def kill(launcher: ApplianceLauncher, address: str) -> None:
    """SIGKILL the launcher's appliance at ``address`` and reap it (in a worker thread)."""
    app = next(a for a in launcher.appliances if a.address == address)
    await trio.to_thread.run_sync(launcher.kill, app)
