"""`sslvpn init` killed (SIGKILL) at each step leaves nothing or a folder a re-run finishes.

The real CLI runs in a subprocess under tests/kill_at.py, which kills it at the Nth file
replacement (the PKI files) or at the rename of the staging folder (after the settings
commit). Afterwards `init` run again must succeed (or say the folder is complete), and
the folder must serve its purpose: a certificate issued, a profile rendered.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from sslvpn.cli import main
from sslvpn.config import DataPaths

KILL_AT = str(Path(__file__).resolve().parent.parent / "kill_at.py")
INIT = ("init", "--public-address", "vpn.example.test")
# (call, nth, when): before the first PKI file, after the last one (the CRL; the settings
# are not committed yet), and at the staging folder's rename (committed by then).
KILLS = [
    ("replace", 1, "before"),
    ("replace", 8, "after"),
    ("rename", 1, "before"),
]


def _global(data_dir: Path, url: str | None) -> list[str]:
    return ["--data-dir", str(data_dir), *(["--database-url", url] if url else [])]


def _killed_init(data_dir: Path, url: str | None, call: str, nth: int, when: str) -> None:
    args = [sys.executable, KILL_AT, call, str(nth), when, *_global(data_dir, url), *INIT]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stderr)


def _run(data_dir: Path, url: str | None, *args: str) -> Result:
    return CliRunner().invoke(main, [*_global(data_dir, url), *args], catch_exceptions=False)


def _check_recovers(data_dir: Path, url: str | None, call: str, nth: int, when: str) -> None:
    _killed_init(data_dir, url, call, nth, when)
    if DataPaths(data_dir).pki_staging_dir.exists():
        said = _run(data_dir, url, "cert", "list")
        assert "was interrupted; run it again to finish it" in said.stderr, said.output
    again = _run(data_dir, url, *INIT)
    assert again.exit_code == 0, again.output
    if call == "rename":
        assert "finished an interrupted init" in again.stdout
    paths = DataPaths(data_dir)
    assert not paths.pki_staging_dir.exists()
    assert _run(data_dir, url, "user", "add", "alice").exit_code == 0
    issued = _run(data_dir, url, "cert", "issue", "alice")
    assert issued.exit_code == 0, issued.output
    profile = _run(data_dir, url, "profile", "alice")
    assert profile.exit_code == 0 and "<tls-crypt>" in profile.stdout, profile.output


@pytest.mark.parametrize(("call", "nth", "when"), KILLS, ids=[f"{c}{n}-{w}" for c, n, w in KILLS])
def test_killed_init_is_finished_or_redone(tmp_path: Path, call: str, nth: int, when: str) -> None:
    _check_recovers(tmp_path / "var", None, call, nth, when)


@pytest.mark.postgres
@pytest.mark.parametrize(("call", "nth", "when"), KILLS[1:], ids=["files", "commit"])
def test_killed_init_on_postgres(
    tmp_path: Path, empty_postgres_url: str, call: str, nth: int, when: str
) -> None:
    _check_recovers(tmp_path / "var", empty_postgres_url, call, nth, when)
