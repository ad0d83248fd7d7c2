"""A read-only data folder (here a read-only bind mount, which binds root too): commands
that only read work, commands that write say the folder is read-only and change nothing."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from sslvpn.cli import main
from sslvpn.config import database_url
from sslvpn.store import StoreError
from sslvpn.store.db import open_engine, session, upgrade
from sslvpn.store.queries import create_user

View = Callable[[Path], Path]


def _cli(data_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--data-dir", str(data_dir), *args], catch_exceptions=False)


def _ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("ro") / "var"
    _ok(_cli(data_dir, "init", "--public-address", "vpn.example.test"))
    _ok(_cli(data_dir, "user", "add", "alice"))
    _ok(_cli(data_dir, "cert", "issue", "alice", "--device", "laptop"))
    return data_dir


@pytest.fixture
def folder(template: Path, tmp_path: Path) -> Path:
    data_dir = tmp_path / "var"
    subprocess.run(["cp", "-a", str(template), str(data_dir)], check=True)
    return data_dir


@pytest.fixture
def read_only_view(tmp_path: Path) -> Iterator[View]:
    """``view(folder)``: the folder again, through a read-only bind mount (removed after)."""
    mounted: list[Path] = []

    def view(folder: Path) -> Path:
        target = tmp_path / f"read-only-{len(mounted)}"
        target.mkdir()
        subprocess.run(["mount", "--bind", str(folder), str(target)], check=True)
        mounted.append(target)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
        return target

    try:
        yield view
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", str(target)], check=True)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_reads_work_and_writes_are_refused_on_a_read_only_folder(
    folder: Path, read_only_view: View
) -> None:
    before = _digest(folder)
    view = read_only_view(folder)
    assert "alice.laptop" in _ok(_cli(view, "cert", "list"))
    assert "alice" in _ok(_cli(view, "user", "list"))
    _ok(_cli(view, "ipsec", "tunnel", "list"))
    assert _ok(_cli(view, "check")).startswith(f"ok: {view}: store intact")
    for args in (("user", "add", "bob"), ("cert", "revoke", "alice"),
                 ("ipsec", "customer-gateway", "add", "dc1", "--address", "198.18.0.1")):
        result = _cli(view, *args)
        assert result.exit_code == 1
        verb = " ".join(args[:3] if args[0] == "ipsec" else args[:2])
        assert result.output == (f"error: the data folder {view} is read-only: `sslvpn {verb}` "
                                 "needs to write there; run it where the data folder is "
                                 "writable\n"), result.output
    assert _digest(folder) == before


def test_rows_a_live_writer_has_only_in_its_log_are_read(
    folder: Path, read_only_view: View
) -> None:
    engine = open_engine(database_url(folder, None))
    try:
        with engine.connect():  # held open: the log is neither checkpointed nor removed
            with session(engine, write=True) as s:
                create_user(s, name="carol")
            assert Path(f"{folder}/sslvpn.db-wal").stat().st_size > 0
            view = read_only_view(folder)
            assert "carol" in _ok(_cli(view, "user", "list"))
    finally:
        engine.dispose()


def test_a_read_only_engine_refuses_a_write_session(folder: Path, read_only_view: View) -> None:
    view = read_only_view(folder)
    engine = open_engine(database_url(view, None), read_only=True)
    try:
        upgrade(engine)  # at the newest revision already: nothing to write
        with pytest.raises(StoreError, match="is open read-only"), session(engine, write=True):
            pass
    finally:
        engine.dispose()
