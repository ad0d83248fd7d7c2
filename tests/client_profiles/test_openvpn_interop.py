"""Our PKI, keys, CRL and unmodified profiles, loaded by real OpenVPN 2.6 on both ends.

A stock ``openvpn`` server (our CA, server certificate, tls-crypt or tls-crypt-v2 server key
and CRL) runs in one namespace, a stock ``openvpn`` client runs our rendered ``.ovpn`` in
another; the tunnel must come up, and a revoked certificate must be refused by the CRL.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from client_profiles import lifecycle, reports
from tests.client_profiles.conftest import Gateway, make_gateway
from tests.netns import NetnsLab, file_contains, wait_until

pytestmark = pytest.mark.interop

SERVER_ADDRESS = "198.18.0.1"
CONNECT_TIMEOUT_S = 60


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    if shutil.which("openvpn") is None:
        pytest.fail("openvpn binary missing: install openvpn 2.6 (scripts/install-test-deps)")
    netns = NetnsLab("sf")
    try:
        yield netns
    finally:
        netns.close()


def _server_config(gw: Gateway, tmp: Path, proto: str, control_channel: str) -> Path:
    p = gw.paths
    wrap = (
        f"tls-crypt-v2 {p.tls_crypt_v2_server_key}"
        if control_channel == "tls-crypt-v2"
        else f"tls-crypt {p.tls_crypt_key}"
    )
    config = tmp / "server.conf"
    config.write_text(
        "\n".join(
            [
                "server 10.8.0.0 255.255.255.0",
                "topology subnet",
                "dev tun",
                f"proto {'tcp-server' if proto == 'tcp' else 'udp'}",
                f"local {SERVER_ADDRESS}",
                "port 1194",
                f"ca {p.ca_cert}",
                f"cert {p.server_cert}",
                f"key {p.server_key}",
                "dh none",
                wrap,
                f"crl-verify {p.crl_pem}",
                "verb 3",
                "",
            ]
        )
    )
    return config


def _start(lab: NetnsLab, tmp: Path, server_conf: Path, profile: str) -> tuple[Path, Path]:
    server_ns, client_ns = lab.namespace("srv"), lab.namespace("cli")
    lab.link(server_ns, f"{SERVER_ADDRESS}/24", client_ns, "198.18.0.2/24")
    server_log, client_log = tmp / "server.log", tmp / "client.log"
    server_ns.spawn(["openvpn", "--config", str(server_conf)], log=server_log)
    assert wait_until(file_contains(server_log, "Initialization Sequence Completed"), 30), (
        server_log.read_text()
    )
    (tmp / "client.ovpn").write_text(profile)
    client_ns.spawn(["openvpn", "--config", str(tmp / "client.ovpn")], log=client_log)
    return server_log, client_log


@pytest.mark.parametrize(
    ("proto", "control_channel"), [("udp", "tls-crypt"), ("tcp", "tls-crypt-v2")]
)
def test_openvpn_client_connects_with_our_profile(
    lab: NetnsLab, tmp_path: Path, proto: str, control_channel: str
) -> None:
    gw = make_gateway(tmp_path / "data", control_channel=control_channel)
    lifecycle.issue_client(gw.engine, gw.paths, user_name="alice", device="laptop", actor="t")
    profile = reports.render_profile(
        gw.engine,
        gw.paths,
        user_name="alice",
        device="laptop",
        proto=proto,
        actor="t",  # type: ignore[arg-type]
    )
    server_log, client_log = _start(
        lab, tmp_path, _server_config(gw, tmp_path, proto, control_channel), profile.text
    )
    connected = wait_until(
        file_contains(client_log, "Initialization Sequence Completed"), CONNECT_TIMEOUT_S
    )
    assert connected, client_log.read_text() + "\n--- server ---\n" + server_log.read_text()
    assert "alice.laptop" in server_log.read_text()


def test_profile_for_both_protocols_fails_over_from_udp_to_tcp(
    lab: NetnsLab, tmp_path: Path
) -> None:
    gw = make_gateway(tmp_path / "data")  # protocols "both": UDP remotes first, then TCP
    lifecycle.issue_client(gw.engine, gw.paths, user_name="alice", actor="t")
    profile = reports.render_profile(gw.engine, gw.paths, user_name="alice", actor="t")
    assert profile.text.index(" udp\n") < profile.text.index(" tcp-client\n")
    server_log, client_log = _start(
        lab, tmp_path, _server_config(gw, tmp_path, "tcp", "tls-crypt"), profile.text
    )
    connected = wait_until(
        file_contains(client_log, "Initialization Sequence Completed"), CONNECT_TIMEOUT_S
    )
    assert connected, client_log.read_text() + "\n--- server ---\n" + server_log.read_text()
    assert "TCP connection established" in client_log.read_text()


def test_revoked_certificate_is_refused_by_openvpn_crl_check(lab: NetnsLab, tmp_path: Path) -> None:
    gw = make_gateway(tmp_path / "data")
    row = lifecycle.issue_client(gw.engine, gw.paths, user_name="alice", actor="t")
    profile = reports.render_profile(gw.engine, gw.paths, serial=row.serial, proto="udp", actor="t")
    lifecycle.revoke(gw.engine, gw.paths, serial=row.serial, reason="keyCompromise", actor="t")
    server_log, client_log = _start(
        lab, tmp_path, _server_config(gw, tmp_path, "udp", "tls-crypt"), profile.text
    )
    refused = wait_until(file_contains(server_log, "certificate revoked"), CONNECT_TIMEOUT_S)
    assert refused, server_log.read_text()
    assert "Initialization Sequence Completed" not in client_log.read_text()
