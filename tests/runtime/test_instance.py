"""One gateway per data folder: the lock, and `serve` refusing before it touches anything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sslvpn.cli import main, serve
from sslvpn.config import DataPaths
from sslvpn.runtime import instance
from sslvpn.runtime.service import GatewayService
from tests.runtime.loopback import make_data_folder

HOLDER = """
import sys
from pathlib import Path
from sslvpn.runtime import instance
with instance.exclusive(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    lock = tmp_path / "serve.lock"
    with instance.exclusive(lock):
        with pytest.raises(instance.AlreadyServing) as refused, instance.exclusive(lock):
            pass
        assert str(refused.value) == (f"another gateway (pid {os.getpid()}) is serving this "
                                      "data folder")
    with instance.exclusive(lock):  # released with the block
        pass
    assert lock.stat().st_mode & 0o777 == 0o600


def test_the_lock_dies_with_its_holder_even_by_sigkill(tmp_path: Path) -> None:
    lock = tmp_path / "serve.lock"
    with subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
            with pytest.raises(instance.AlreadyServing) as refused, instance.exclusive(lock):
                pass
            assert refused.value.pid == holder.pid
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait(10)
    with instance.exclusive(lock):
        assert lock.read_text() == f"{os.getpid()}\n"


def test_serve_refuses_a_held_data_folder_before_opening_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths, engine = make_data_folder(tmp_path)
    engine.dispose()
    started: list[GatewayService] = []

    async def fake_serve(service: GatewayService) -> None:
        started.append(service)

    monkeypatch.setattr(serve, "serve", fake_serve)
    monkeypatch.setattr(serve, "store", lambda _ctx, **_kw: pytest.fail("the store was opened"))
    with instance.exclusive(paths.serve_lock):
        result = CliRunner().invoke(main, ["--data-dir", str(paths.data_dir), "serve",
                                           "--no-portal"])
    assert result.exit_code == 1
    assert result.output == (f"error: another gateway (pid {os.getpid()}) is serving this "
                             "data folder\n")
    assert started == []


def test_serve_names_a_missing_data_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = CliRunner().invoke(main, ["--data-dir", str(missing), "serve"])
    assert result.exit_code == 1 and "does not exist; run `sslvpn init`" in result.output
    assert not missing.exists() and not DataPaths(missing).serve_lock.exists()
