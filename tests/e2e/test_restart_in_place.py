"""`glidewms up` restarts a killed service in place: same config, same port.

A service that comes back on a new port strands everything that knew the old
one (the frontend's config, running pilots, the users' client.json), so the
port the system picked on the first start is written into the service's
config and kept. Real processes, killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest
import yaml

from glidewms.launcher import MAX_RESTARTS, RESTART_WINDOW, LaunchError, may_restart
from tests.harness import systems, wait_for


@pytest.mark.parametrize(
    ("ages", "allowed"),
    [
        ([], True),
        ([1.0] * (MAX_RESTARTS - 1), True),
        ([1.0] * MAX_RESTARTS, False),
        ([RESTART_WINDOW + 1] * MAX_RESTARTS, True),  # old restarts no longer count
    ],
)
def test_restart_budget(ages: list[float], allowed: bool) -> None:
    now = 10_000.0
    assert may_restart([now - age for age in ages], now) is allowed


def _kill(proc_pid: int) -> None:
    os.killpg(proc_pid, signal.SIGKILL)


def test_killed_services_come_back_on_their_ports(tmp_path: Path) -> None:
    with systems(tmp_path, max_pilots=0) as start:
        system = start()
        inst = system.inst
        urls = {name: running.url for name, running in inst.services.items()}
        for name, url in urls.items():
            config = yaml.safe_load(inst.path("config", f"{name}.yaml").read_text())
            assert url.endswith(f":{config['listen_port']}"), (name, url, config)

        for name in ("pool", "factory", "frontend"):
            old = inst.services[name].process
            _kill(old.pid)
            old.wait(10)
            assert inst.restart_dead() == [name]
            assert inst.services[name].url == urls[name]
            assert inst.services[name].process.pid != old.pid

        # the users' client and the frontend still reach what they knew
        assert system.pool.jobs() == []
        assert isinstance(system.frontend_status(), dict)
        wait_for(lambda: system.factory("entries"), "the factory to answer at its old URL")
        assert inst.restart_dead() == []


def test_a_taken_port_is_an_error_naming_the_config(tmp_path: Path) -> None:
    with systems(tmp_path, max_pilots=0) as start:
        inst = start().inst
        pool = inst.services["pool"].process
        port = int(inst.services["pool"].url.rsplit(":", 1)[1])
        _kill(pool.pid)
        pool.wait(10)
        with socket.socket() as squatter:
            # as uvicorn binds: the killed pool's connections may linger in
            # TIME_WAIT on the port (the frontend's, the console's), which
            # must not stop the squatter, only its listening must stop the pool
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            with pytest.raises(LaunchError, match=r"port \d+ \(kept in .*config/pool\.yaml"):
                inst.restart_dead()
