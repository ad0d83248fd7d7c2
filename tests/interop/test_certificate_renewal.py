"""Renewal without an outage, with the real openvpn 2.6 client against `sslvpn serve`: the
old profile keeps connecting after `cert renew`; once the new profile has connected, the old
one is refused and the CRL lists it with reason superseded."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from sslvpn.config import DataPaths
from tests.interop.conftest import VPC_HOST, Topology, build_topology, sslvpn
from tests.interop.test_openvpn_client import CONNECTED, OpenVpnClient
from tests.netns import wait_until

pytestmark = pytest.mark.interop


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    with build_topology(tmp_path, prefix="c11r", serve_args=("--no-portal",)) as topo:
        yield topo


def _superseded_on_the_crl(data_dir: Path, serial: str) -> bool:
    crl = x509.load_pem_x509_crl(DataPaths(data_dir).crl_pem.read_bytes())
    entry = crl.get_revoked_certificate_by_serial_number(int(serial, 16))
    if entry is None:
        return False
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    return reason == x509.ReasonFlags.superseded


def test_the_old_profile_works_until_the_renewed_one_connects(topology: Topology) -> None:
    old_serial = topology.issue("alice", "laptop")
    old_profile = topology.profile("alice", "laptop", "udp")
    out = sslvpn(topology.data_dir, "cert", "renew", old_serial).output
    new_serial = out.split()[3]
    old = OpenVpnClient(topology, old_profile)
    try:
        old.wait_for(CONNECTED)  # renewed, yet the device is not cut off
        assert topology.client_ns.ok("ping", "-c", "1", "-W", "2", VPC_HOST)
    finally:
        old.stop()
    assert old_serial in sslvpn(topology.data_dir, "cert", "list").output
    new_profile = topology.profile("alice", "laptop", "tcp")
    assert new_serial in sslvpn(topology.data_dir, "cert", "list").output
    new = OpenVpnClient(topology, new_profile)
    try:
        new.wait_for(CONNECTED)
        connected = time.monotonic()
        assert wait_until(lambda: _superseded_on_the_crl(topology.data_dir, old_serial), 20), \
            "the old certificate is not on the CRL 20 s after its renewal connected"
        took = time.monotonic() - connected
        listing = sslvpn(topology.data_dir, "cert", "list").output
        assert any(old_serial in line and "revoked" in line for line in listing.splitlines())
    finally:
        new.stop()
    refused = OpenVpnClient(topology, old_profile, "--auth-retry", "none")
    try:
        refused.wait_for("AUTH_FAILED")
        assert CONNECTED not in refused.text()
    finally:
        refused.stop()
    sys.stderr.write(f"\n[interop] old certificate on the CRL {took:.1f} s after its renewal "
                     "connected\n")
