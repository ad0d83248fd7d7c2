"""`sslvpn serve` under faults, with the real openvpn client in namespaces: a full disk under
the database keeps the session's records until there is room again; a second `serve` on the
same data folder is refused and changes nothing; a restart after SIGKILL adds no second
masquerade rule; a TUN device deleted under the gateway comes back and the session pings
again."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.conftest import GATEWAY_OUTER, SSLVPN, VPC_HOST, Topology, build_topology
from tests.interop.test_openvpn_client import CONNECTED, OpenVpnClient
from tests.netns import file_contains, wait_until

pytestmark = pytest.mark.interop

SMALL_DISK = "3m"
LANDED_WITHIN = 30.0  # seconds the records may take to reach the store once there is room


def _report(what: str) -> None:
    sys.stderr.write(f"\n[faults] {what}\n")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs where the data folder will be; always unmounted."""
    data = tmp_path / "data"
    data.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK},mode=0700", "tmpfs",
                    str(data)], check=True, capture_output=True)
    try:
        yield data
    finally:
        if subprocess.run(["umount", str(data)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(data)], capture_output=True, check=False)


@pytest.fixture
def disk_topology(tmp_path: Path, small_disk: Path) -> Iterator[Topology]:
    with build_topology(tmp_path, prefix="fd", serve_args=("--no-portal",)) as topo:
        assert topo.data_dir == small_disk
        yield topo


def _fill(path: Path) -> None:
    """Take every free byte of the file system holding ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for size in (1 << 16, 1 << 12, 1):
            chunk = b"\0" * size
            with contextlib.suppress(OSError):
                while os.write(fd, chunk):
                    pass
    finally:
        os.close(fd)
    with pytest.raises(OSError) as full, path.open("ab") as more:
        more.write(b"\0")
        more.flush()
    assert full.value.errno == errno.ENOSPC


def _stored(data_dir: Path, serial: str) -> tuple[int, str | None]:
    """The serial's open session records and its stored lease, as the store holds them."""
    with contextlib.closing(sqlite3.connect(data_dir / "sslvpn.db", timeout=10)) as db:
        opened = db.execute("SELECT count(*) FROM vpnsessionrecord WHERE certificate_serial = ?"
                            " AND disconnected_at IS NULL", (serial.lower(),)).fetchone()[0]
        lease = db.execute("SELECT address FROM addresslease WHERE certificate_serial = ?",
                           (serial.lower(),)).fetchone()
    return int(opened), lease[0] if lease else None


def test_records_written_while_the_disk_is_full_land_once_there_is_room(
    disk_topology: Topology,
) -> None:
    topo = disk_topology
    serial = topo.issue("alice", "laptop")
    profile = topo.profile("alice", "laptop", "udp")
    with contextlib.closing(sqlite3.connect(topo.data_dir / "sslvpn.db", timeout=10)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the next write needs new space
    filler = topo.data_dir / "filler"
    _fill(filler)
    client = OpenVpnClient(topo, profile)
    try:
        client.wait_for(CONNECTED)
        if not wait_until(file_contains(topo.gateway_log, "accounting records failed"), 10):
            pytest.fail("the store never failed:\n" + topo.gateway_log.read_text()[-3000:])
        # the data path does not depend on the store; the outage lasts these pings (2 s)
        assert topo.client_ns.ok("ping", "-c", "5", "-i", "0.5", "-W", "2", VPC_HOST)
        assert _stored(topo.data_dir, serial) == (0, None)
        filler.unlink()
        freed = time.monotonic()
        landed = wait_until(lambda: _stored(topo.data_dir, serial) == (1, "10.8.0.2"),
                            LANDED_WITHIN, interval=0.1)
        took = time.monotonic() - freed
        assert landed, ("the session's record and lease never reached the store:\n"
                        + topo.gateway_log.read_text()[-3000:])
        _report(f"session record and lease stored {took:.1f} s after space was freed")
        assert "accounting records are written again" in topo.gateway_log.read_text()
    finally:
        client.stop()


@pytest.fixture
def snat_topology(tmp_path: Path) -> Iterator[Topology]:
    with build_topology(tmp_path, snat=True, prefix="fl", serve_args=("--no-portal",)) as topo:
        yield topo


def _serve(topo: Topology) -> list[str]:
    return [SSLVPN, "--data-dir", str(topo.data_dir), "serve", "--listen", GATEWAY_OUTER,
            "--no-portal", "--workers", "1"]  # the faults are those of one gateway process


def _snat_table(topo: Topology) -> str:
    return topo.gateway_ns.run("nft", "list", "table", "ip", "sslvpn")


def test_a_second_serve_on_the_same_data_folder_is_refused_and_changes_nothing(
    snat_topology: Topology,
) -> None:
    topo = snat_topology
    serial = topo.issue("alice", "laptop")
    client = OpenVpnClient(topo, topo.profile("alice", "laptop", "udp"))
    try:
        client.wait_for(CONNECTED)
        assert topo.client_ns.ok("ping", "-c", "1", "-W", "2", VPC_HOST)
        socket_before = topo.control.path.stat().st_ino
        table_before = _snat_table(topo)
        [live] = topo.control.list_sessions()
        assert wait_until(lambda: _stored(topo.data_dir, serial) == (1, "10.8.0.2"), 10)
        assert topo.gateway is not None
        second = subprocess.run(["ip", "netns", "exec", topo.gateway_ns.name, *_serve(topo)],
                                capture_output=True, text=True, timeout=60, check=False)
        assert second.returncode != 0
        assert (f"another gateway (pid {topo.gateway.pid}) is serving this data folder"
                in second.stderr), second.stderr + second.stdout
        assert topo.control.path.stat().st_ino == socket_before
        assert [s.session_id for s in topo.control.list_sessions()] == [live.session_id]
        assert _stored(topo.data_dir, serial) == (1, "10.8.0.2")  # the record is still open
        assert _snat_table(topo) == table_before
        assert table_before.count("masquerade") == 1
        assert topo.client_ns.ok("ping", "-c", "1", "-W", "2", VPC_HOST)
    finally:
        client.stop()


def test_a_restart_after_sigkill_keeps_one_masquerade_rule(snat_topology: Topology) -> None:
    topo = snat_topology
    assert topo.gateway is not None
    os.kill(topo.gateway.pid, signal.SIGKILL)
    topo.gateway.wait(10)
    assert _snat_table(topo).count("masquerade") == 1  # left behind
    log = topo.work / "restarted.log"
    topo.gateway = topo.gateway_ns.spawn(_serve(topo), log=log)
    if not wait_until(file_contains(log, "listening on tcp"), 20):
        pytest.fail("the gateway did not restart:\n" + log.read_text())
    assert _snat_table(topo).count("masquerade") == 1
    topo.issue("bob", "laptop")
    client = OpenVpnClient(topo, topo.profile("bob", "laptop", "udp"))
    try:
        client.wait_for(CONNECTED)
        assert topo.client_ns.ok("ping", "-c", "1", "-W", "2", VPC_HOST)  # through SNAT
    finally:
        client.stop()


@pytest.fixture
def plain_topology(tmp_path: Path) -> Iterator[Topology]:
    with build_topology(tmp_path, prefix="ft", serve_args=("--no-portal",)) as topo:
        yield topo


def test_a_deleted_tun_device_comes_back_and_the_session_pings_again(
    plain_topology: Topology,
) -> None:
    topo = plain_topology
    topo.issue("carol", "laptop")
    client = OpenVpnClient(topo, topo.profile("carol", "laptop", "udp"))
    try:
        client.wait_for(CONNECTED)
        assert topo.client_ns.ok("ping", "-c", "1", "-W", "2", VPC_HOST)
        [live] = topo.control.list_sessions()
        topo.gateway_ns.run("ip", "link", "delete", "sslvpn0")
        deleted = time.monotonic()
        back = wait_until(lambda: topo.client_ns.ok("ping", "-c", "1", "-W", "1", VPC_HOST),
                          30, interval=0.2)
        took = time.monotonic() - deleted
        log = topo.gateway_log.read_text()
        assert back, "no ping through the tunnel 30 s after the TUN was deleted:\n" + log[-3000:]
        _report(f"pinging the VPC host again {took:.1f} s after the TUN device was deleted")
        assert [s.session_id for s in topo.control.list_sessions()] == [live.session_id]
        assert log.count("TUN device sslvpn0 vanished") == 1
        assert "TUN device sslvpn0 recreated with its addresses and routes" in log
        assert "10.8.0.1/24" in topo.gateway_ns.run("ip", "-br", "addr", "show", "sslvpn0")
    finally:
        client.stop()
