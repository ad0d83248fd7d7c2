"""The supervisor of `serve --workers`, with stand-in workers (small Python processes):
it restarts one that dies and stops them all with SIGTERM, killing only a hung one."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sslvpn.runtime.admission import raise_descriptor_limit
from sslvpn.runtime.workers import Supervisor, WorkerSlot, next_delay

# a worker that writes its pid to a file and stops on SIGTERM by writing "clean"
WORKER = """
import pathlib, signal, sys, time
out = pathlib.Path(sys.argv[1])
def stop(*_):
    out.with_suffix(".stopped").write_text("clean")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop if sys.argv[2] == "polite" else signal.SIG_IGN)
out.write_text(str(__import__("os").getpid()))
while True:
    time.sleep(1)
"""


async def _wait(condition: object, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.02)


def _command(tmp_path: Path, manner: str = "polite"):  # type: ignore[no-untyped-def]
    def command(slot: WorkerSlot) -> list[str]:
        return [sys.executable, "-c", WORKER, str(tmp_path / f"w{slot.index}.pid"), manner]
    return command


async def test_a_killed_worker_is_started_again_and_sigterm_stops_all(tmp_path: Path) -> None:
    supervisor = Supervisor(2, _command(tmp_path), restart_delay=0.1)
    running = asyncio.create_task(supervisor.run())
    pids = [tmp_path / "w0.pid", tmp_path / "w1.pid"]
    await _wait(lambda: all(p.exists() and p.read_text() for p in pids))
    killed = int(pids[1].read_text())
    pids[1].unlink()
    os.kill(killed, signal.SIGKILL)
    await _wait(lambda: pids[1].exists() and pids[1].read_text())
    assert int(pids[1].read_text()) != killed
    assert supervisor.restarts == 1
    supervisor.stop()
    await asyncio.wait_for(running, 10)
    assert (tmp_path / "w0.stopped").read_text() == "clean"
    assert (tmp_path / "w1.stopped").read_text() == "clean"
    assert all(p.returncode == 0 for p in supervisor.processes.values())


async def test_a_worker_ignoring_sigterm_is_killed_after_the_timeout(tmp_path: Path) -> None:
    supervisor = Supervisor(1, _command(tmp_path, "deaf"), stop_timeout=0.3)
    running = asyncio.create_task(supervisor.run())
    await _wait(lambda: (tmp_path / "w0.pid").exists() and (tmp_path / "w0.pid").read_text())
    supervisor.stop()
    await asyncio.wait_for(running, 10)
    assert supervisor.processes[0].returncode == -signal.SIGKILL


def test_a_worker_slot_is_parsed_and_checked() -> None:
    assert WorkerSlot.parse("1/2") == WorkerSlot(1, 2)
    with pytest.raises(ValueError, match="INDEX/COUNT"):
        WorkerSlot.parse("2/2")
    assert WorkerSlot(1, 2).control_socket(Path("/d/control.sock")) == Path("/d/control-w1.sock")
    assert WorkerSlot(0, 2).control_socket(Path("/d/control.sock")) == Path("/d/control.sock")


def test_serve_lifts_its_descriptor_limit_to_the_hard_one(
        caplog: pytest.LogCaptureFixture) -> None:
    """And warns when even the hard limit cannot hold the configured clients."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
        with caplog.at_level(logging.INFO, "sslvpn.runtime.admission"):
            assert raise_descriptor_limit(100) == hard
        assert "soft limit was 256" in caplog.text and "below" not in caplog.text
        with caplog.at_level(logging.INFO, "sslvpn.runtime.admission"):
            assert raise_descriptor_limit(hard) == hard
        assert f"the open-file limit {hard} is below the {hard + 256} descriptors {hard} " \
            "clients need" in caplog.text
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# a stand-in supervisor: starts a worker that asks to stop with it, prints its pid, waits
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
print(child.pid, flush=True)
time.sleep(60)
"""
CHILD = """
import pathlib, signal, sys, time
from sslvpn.runtime.workers import stop_with_supervisor
out = pathlib.Path(sys.argv[1])
signal.signal(signal.SIGTERM, lambda *_: (out.write_text("clean"), sys.exit(0)))
stop_with_supervisor()
out.with_suffix(".ready").write_text("")
time.sleep(60)
"""


def test_a_worker_is_told_to_stop_when_its_supervisor_is_killed(tmp_path: Path) -> None:
    out = tmp_path / "worker"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD, str(out)],  # noqa: S603
                              stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        parent.stdout.readline()
        deadline = time.monotonic() + 20
        while not out.with_suffix(".ready").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        parent.kill()
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert out.read_text() == "clean"
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()  # type: ignore[union-attr]


def test_a_worker_failing_at_once_is_restarted_less_and_less_often() -> None:
    waits, delay = [], 0.0
    for _ in range(7):
        delay = next_delay(delay, lived=0.5, first=1.0)
        waits.append(delay)
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert next_delay(30.0, lived=3600.0, first=1.0) == 1.0  # ran well: prompt again
