"""The systemd units in contrib/systemd: ``systemd-analyze verify`` passes them without a
warning, and the appliance unit's ExecStart line, run as systemd would run it with the
example environment file, starts a working appliance that a SIGTERM stops cleanly.

systemd is not PID 1 on every test machine, so the units are not started by systemd here;
``systemd-analyze verify`` works without it. The units name /usr/local/bin/resilfs; the
copies checked here name this venv's ``resilfs`` instead, which must exist for verify.
"""
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from resilfs.auth import write_secret

pytestmark = pytest.mark.timeout(120)

UNITS = os.path.join(os.path.dirname(__file__), "..", "..", "contrib", "systemd")
RESILFS = os.path.join(os.path.dirname(sys.executable), "resilfs")
DEADLINE = 30.0


def _units_here(tmp_path) -> str:
    """Copies of the units naming this venv's resilfs."""
    out = tmp_path / "units"
    out.mkdir()
    for name in os.listdir(UNITS):
        with open(os.path.join(UNITS, name)) as f:
            text = f.read().replace("/usr/local/bin/resilfs", RESILFS)
        (out / name).write_text(text)
    return str(out)


def test_units_pass_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    if not os.path.exists(RESILFS):
        pytest.skip(f"{RESILFS} is missing (the venv's console script)")
    units = _units_here(tmp_path)
    names = sorted(n for n in os.listdir(units) if n.endswith((".service", ".mount")))
    assert names == ["mnt-resilfs.mount", "resilfs-appliance@.service"]
    targets = [os.path.join(units, n.replace("@.", "@7400.")) for n in names]
    r = subprocess.run(["systemd-analyze", "verify", *targets], capture_output=True,
                       text=True, timeout=DEADLINE)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def _exec_start(unit: str) -> str:
    with open(unit) as f:
        text = f.read().replace("\\\n", " ")
    return re.search(r"^ExecStart=(.*)$", text, re.M).group(1)


def _environment(path: str) -> dict:
    env = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                env[key] = value
    return env


def _expand(command: str, env: dict, instance: str) -> list[str]:
    """systemd's rules for this line: ``${X}`` is one word, ``$X`` splits on spaces."""
    words = []
    for word in shlex.split(command.replace("%i", instance)):
        braced = re.fullmatch(r"\$\{(\w+)\}", word)
        bare = re.fullmatch(r"\$(\w+)", word)
        if braced:
            words.append(env[braced.group(1)])
        elif bare:
            words.extend(env[bare.group(1)].split())
        else:
            words.append(re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], word))
    return words


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_appliance_unit_command_runs_an_appliance(tmp_path):
    port, metrics = _free_port(), _free_port()
    env = _environment(os.path.join(UNITS, "appliance.env.example"))
    assert set(env) == {"RESILFS_LISTEN", "RESILFS_CAPACITY", "RESILFS_APPLIANCE_ARGS"}
    env.update(RESILFS_LISTEN=f"127.0.0.1:{port}", RESILFS_CAPACITY="64M",
               RESILFS_APPLIANCE_ARGS=re.sub(r"\S+:9400", f"127.0.0.1:{metrics}",
                                             env["RESILFS_APPLIANCE_ARGS"]))
    argv = _expand(_exec_start(os.path.join(UNITS, "resilfs-appliance@.service")), env,
                   str(port))
    assert argv[0] == "/usr/local/bin/resilfs"
    persist = str(tmp_path / "persist")
    secret = str(tmp_path / "secret")
    write_secret(secret)
    argv = [sys.executable, "-m", "resilfs",
            *[persist if a == f"/dev/shm/resilfs-{port}" else secret
              if a == "/etc/resilfs/secret" else a for a in argv[1:]]]
    assert persist in argv and secret in argv, argv
    with open(tmp_path / "log", "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + DEADLINE
        while True:
            assert process.poll() is None, (tmp_path / "log").read_text()
            try:
                socket.create_connection(("127.0.0.1", metrics), timeout=1).close()
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "log").read_text()
                time.sleep(0.05)
        process.send_signal(signal.SIGTERM)  # KillSignal=
        assert process.wait(DEADLINE) == 0, (tmp_path / "log").read_text()
        assert os.path.exists(os.path.join(persist, "appliance-id"))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
