"""Backup while `sslvpn serve` runs, restore into a new folder, serve from that: the real
openvpn 2.6 client with the profile made before the backup connects and pings the VPC."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.interop.conftest import GATEWAY_OUTER, SSLVPN, VPC_HOST, build_topology, sslvpn
from tests.interop.test_openvpn_client import CONNECTED, OpenVpnClient
from tests.netns import file_contains, wait_until

pytestmark = pytest.mark.interop


def test_a_restored_gateway_serves_the_profiles_made_before_the_backup(tmp_path: Path) -> None:
    with build_topology(tmp_path, prefix="sb") as topo:
        topo.issue("alice", "laptop")
        profile = topo.profile("alice", "laptop", "udp")
        archive = tmp_path / "backup.tgz"
        made = sslvpn(topo.data_dir, "backup", str(archive))  # the gateway is running
        assert "0600" in made.output and stat.S_IMODE(archive.stat().st_mode) == 0o600
        assert topo.gateway is not None
        topo.lab.stop(topo.gateway)

        restored = tmp_path / "restored"
        sslvpn(restored, "restore", str(archive))
        topo.gateway_log = tmp_path / "restored-gateway.log"
        topo.gateway = topo.gateway_ns.spawn(
            [SSLVPN, "--data-dir", str(restored), "serve", "--listen", GATEWAY_OUTER,
             "--workers", "1"],
            log=topo.gateway_log)
        if not wait_until(file_contains(topo.gateway_log, "listening on tcp"), 20):
            pytest.fail("restored gateway did not start:\n" + topo.gateway_log.read_text())

        client = OpenVpnClient(topo, profile)
        try:
            client.wait_for(CONNECTED)
            assert topo.client_ns.ok("ping", "-c", "3", "-i", "0.2", "-W", "2", VPC_HOST)
        finally:
            client.stop()
