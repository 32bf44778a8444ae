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
"""
import pytest

from resilfs.appliance.launcher import ApplianceLauncher


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
