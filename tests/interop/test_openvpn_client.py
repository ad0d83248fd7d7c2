"""The real openvpn 2.6 client against `sslvpn serve`, in network namespaces.

Matrix: UDP/TCP x AES-256-GCM/CHACHA20-POLY1305 x tls-crypt/tls-crypt-v2, each pinging the
VPC host and moving 50 MB both ways through one TCP stream checked by SHA-256; plus the
policy cases (revoked refused, revoked while connected, kick, outside-VPC unreachable),
a client-initiated renegotiation during a transfer, the profile's UDP-then-TCP fallback,
and a clean gateway shutdown (last: it stops the module's gateway).
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from sslvpn.runtime.control_server import ControlError
from tests.interop.conftest import (
    OUTSIDE_HOST,
    STREAM_PORT,
    STREAM_TOOL,
    VPC_HOST,
    Topology,
    sslvpn,
    update_settings,
)
from tests.netns import Namespace, file_contains, wait_until

pytestmark = pytest.mark.interop

CONNECTED = "Initialization Sequence Completed"
FIFTY_MB = 50 * 1024 * 1024


class OpenVpnClient:
    """One openvpn client process in the client namespace, stopped by the test's finalizer."""

    def __init__(
        self, topo: Topology, profile: Path, *extra: str, ns: Namespace | None = None
    ) -> None:
        self.topo = topo
        self.log = topo.work / f"{profile.stem}-{time.monotonic_ns()}.log"
        self.proc = (ns or topo.client_ns).spawn(
            ["openvpn", "--config", str(profile), "--disable-dco", "--verb", "3",
             "--log", str(self.log), *extra],
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, needle: str, timeout: float = 20) -> None:
        if not wait_until(file_contains(self.log, needle), timeout):
            gateway = self.topo.gateway_log.read_text(errors="replace")[-3000:]
            pytest.fail(f"no {needle!r} in the client log:\n{self.text()[-3000:]}\n"
                        f"--- gateway log tail ---\n{gateway}")

    def stop(self) -> None:
        self.topo.lab.stop(self.proc)


@pytest.fixture
def clients(topology: Topology):  # type: ignore[no-untyped-def]
    started: list[OpenVpnClient] = []

    def start(profile: Path, *extra: str, ns: Namespace | None = None) -> OpenVpnClient:
        client = OpenVpnClient(topology, profile, *extra, ns=ns)
        started.append(client)
        return client

    yield start
    for client in started:
        client.stop()
    # the next test must not see this client's session any more
    wait_until(lambda: _live_serials(topology) == [], 10)


def _sessions(topo: Topology) -> list[dict[str, object]]:
    """What `sslvpn sessions --json` shows."""
    return list(json.loads(sslvpn(topo.data_dir, "sessions", "--json").output)["sessions"])


def _live_serials(topo: Topology) -> list[str]:
    try:
        return [s.certificate_serial for s in topo.control.list_sessions()]
    except ControlError:  # the gateway is gone (the shutdown test)
        return []


def _stream(topo: Topology, mode: str, amount: str) -> dict[str, object]:
    out = topo.client_ns.run(sys.executable, STREAM_TOOL, mode, VPC_HOST, str(STREAM_PORT),
                             amount, timeout=120)
    return json.loads(out)


def _report(what: str) -> None:
    sys.stderr.write(f"\n[interop] {what}\n")


MATRIX = [
    ("udp", "AES-256-GCM", "tls-crypt"),
    ("tcp", "CHACHA20-POLY1305", "tls-crypt"),
    ("udp", "CHACHA20-POLY1305", "tls-crypt-v2"),
    ("tcp", "AES-256-GCM", "tls-crypt-v2"),
]


@pytest.mark.parametrize(("proto", "cipher", "control"), MATRIX,
                         ids=["-".join(m) for m in MATRIX])
def test_connect_ping_and_move_50mb_each_way(
    topology: Topology, clients, proto: str, cipher: str, control: str  # type: ignore[no-untyped-def]
) -> None:
    device = f"{proto}-{cipher[:4].lower()}-{control}"
    serial = topology.issue("alice", device)
    update_settings(topology.data_dir, control_channel=control)
    try:
        profile = topology.profile("alice", device, proto)
    finally:
        update_settings(topology.data_dir, control_channel="tls-crypt")
    assert (f"<{control}>" in profile.read_text())
    client = clients(profile, "--data-ciphers", cipher)
    client.wait_for(CONNECTED)
    assert f"Data Channel: cipher '{cipher}'" in client.text()
    completed = next(line for line in client.text().splitlines() if CONNECTED in line)
    _report(f"{device}: {completed.strip()}")
    assert topology.client_ns.ok("ping", "-c", "3", "-i", "0.2", "-W", "2", VPC_HOST)
    [session] = _sessions(topology)
    assert (session["user"], session["certificate_serial"], session["protocol"]) == (
        "alice", serial, proto)
    assert session["tls_group"] == "x25519"  # Debian's 2.6 is on OpenSSL 3.0: no ML-KEM
    # what the client's peer-info said it is (IV_VER, IV_PLAT)
    assert re.fullmatch(r"2\.6\.\d+", str(session["client_version"])), session
    assert (session["client_platform"], session["client_gui"]) == ("linux", None)
    up = _stream(topology, "put", str(FIFTY_MB))
    down = _stream(topology, "get", str(FIFTY_MB))
    assert up["ok"] and up["bytes"] == FIFTY_MB, up
    assert down["ok"] and down["bytes"] == FIFTY_MB, down
    _report(f"{device}: 50 MB up {up['mbps']} Mbit/s, 50 MB down {down['mbps']} Mbit/s")
    [session] = _sessions(topology)
    assert int(str(session["bytes_in"])) > FIFTY_MB
    assert int(str(session["bytes_out"])) > FIFTY_MB


def test_outside_the_vpc_is_not_reachable(topology: Topology, clients) -> None:  # type: ignore[no-untyped-def]
    topology.issue("dave", "laptop")
    client = clients(topology.profile("dave", "laptop", "udp"))
    client.wait_for(CONNECTED)
    # the host exists and routes back to the pool: only the gateway's policy can stop it
    assert topology.gateway_ns.ok("ping", "-c", "1", "-W", "2", OUTSIDE_HOST)
    topology.client_ns.run("ip", "route", "replace", "10.20.0.0/24", "dev", "tun0")
    try:
        assert not topology.client_ns.ok("ping", "-c", "3", "-i", "0.2", "-W", "1", OUTSIDE_HOST)
        assert topology.client_ns.ok("ping", "-c", "1", "-W", "2", VPC_HOST)
    finally:
        topology.client_ns.run("ip", "route", "del", "10.20.0.0/24", check=False)


def test_revoked_certificate_is_refused(topology: Topology, clients) -> None:  # type: ignore[no-untyped-def]
    serial = topology.issue("bob", "phone")
    profile = topology.profile("bob", "phone", "udp")
    sslvpn(topology.data_dir, "cert", "revoke", serial, "--reason", "keyCompromise")
    client = clients(profile, "--auth-retry", "none")
    client.wait_for("AUTH_FAILED")
    assert CONNECTED not in client.text()
    assert _sessions(topology) == []


def test_revoking_a_connected_client_disconnects_it(topology: Topology, clients) -> None:  # type: ignore[no-untyped-def]
    serial = topology.issue("carol", "laptop")
    client = clients(topology.profile("carol", "laptop", "tcp"))
    client.wait_for(CONNECTED)
    assert topology.client_ns.ok("ping", "-c", "1", "-W", "2", VPC_HOST)
    sslvpn(topology.data_dir, "cert", "revoke", serial)
    revoked_at = time.monotonic()
    assert wait_until(lambda: serial not in _live_serials(topology), 5), "still connected after 5 s"
    took = time.monotonic() - revoked_at
    _report(f"revoked certificate disconnected after {took:.1f} s")
    assert not topology.client_ns.ok("ping", "-c", "1", "-W", "1", VPC_HOST)
    client.wait_for("AUTH_FAILED", timeout=30)  # its reconnection is refused


def test_kick_ends_a_session(topology: Topology, clients) -> None:  # type: ignore[no-untyped-def]
    topology.issue("erin", "laptop")
    client = clients(topology.profile("erin", "laptop", "udp"))
    client.wait_for(CONNECTED)
    [session] = _sessions(topology)
    out = sslvpn(topology.data_dir, "kick", str(session["session_id"])).output
    assert "ended 1 session" in out
    assert wait_until(lambda: all(s["session_id"] != session["session_id"]
                                  for s in _sessions(topology)), 5)


def test_client_renegotiation_keeps_the_stream(topology: Topology, clients) -> None:  # type: ignore[no-untyped-def]
    topology.issue("frank", "laptop")
    client = clients(topology.profile("frank", "laptop", "udp"), "--reneg-sec", "3")
    client.wait_for(CONNECTED)
    result = _stream(topology, "putfor", "8")
    assert result["ok"], result
    renegotiations = len(re.findall(r"TLS: soft reset", client.text()))
    _report(f"renegotiation: {renegotiations} soft resets during an 8 s stream of "
            f"{result['bytes']} bytes at {result['mbps']} Mbit/s, hash intact")
    assert renegotiations >= 1
    assert topology.client_ns.ok("ping", "-c", "1", "-W", "2", VPC_HOST)


def test_profile_falls_back_to_tcp_when_udp_is_blocked(topology: Topology, clients) -> None:  # type: ignore[no-untyped-def]
    topology.issue("hana", "laptop")
    profile = topology.work / "hana-both.ovpn"
    sslvpn(topology.data_dir, "profile", "hana", "--device", "laptop", "-o", str(profile))
    remotes = [line for line in profile.read_text().splitlines() if line.startswith("remote ")]
    assert remotes == ["remote 198.18.0.1 1194 udp", "remote 198.18.0.1 1194 tcp-client"]
    block = ("table inet svblock {\n chain input {\n type filter hook input priority 0;\n"
             " udp dport 1194 drop\n }\n}\n")
    topology.gateway_ns.run("nft", "-f", "-", stdin=block)
    try:
        client = clients(profile, "--server-poll-timeout", "2")
        client.wait_for(CONNECTED, timeout=30)
        assert "TCP connection established" in client.text()
        [session] = [s for s in _sessions(topology) if s["user"] == "hana"]
        assert session["protocol"] == "tcp"
        assert topology.client_ns.ok("ping", "-c", "1", "-W", "2", VPC_HOST)
    finally:
        topology.gateway_ns.run("nft", "delete", "table", "inet", "svblock", check=False)


def test_two_clients_at_once_are_isolated_from_each_other(topology: Topology, clients) -> None:  # type: ignore[no-untyped-def]
    topology.issue("ivan", "laptop")
    topology.issue("judy", "phone")
    ivan_profile = topology.profile("ivan", "laptop", "udp")
    judy_profile = topology.profile("judy", "phone", "tcp")
    ivan = clients(ivan_profile)
    judy = clients(judy_profile, ns=topology.second_client_ns)
    ivan.wait_for(CONNECTED)
    judy.wait_for(CONNECTED)
    by_user = {str(s["user"]): s for s in _sessions(topology)}
    assert set(by_user) == {"ivan", "judy"}
    assert by_user["ivan"]["vpn_address"] != by_user["judy"]["vpn_address"]
    for ns in (topology.client_ns, topology.second_client_ns):
        assert ns.ok("ping", "-c", "1", "-W", "2", VPC_HOST)
    # client-to-client is off by default: the pool is on-link for ivan, yet judy is unreachable
    assert not topology.client_ns.ok("ping", "-c", "2", "-i", "0.2", "-W", "1",
                                     str(by_user["judy"]["vpn_address"]))


def test_sigterm_tells_clients_and_removes_the_tun(topology: Topology, clients) -> None:  # type: ignore[no-untyped-def]
    """Last test of the module: it stops the module's gateway."""
    topology.issue("gina", "laptop")
    client = clients(topology.profile("gina", "laptop", "udp"))
    client.wait_for(CONNECTED)
    assert "sslvpn0" in topology.gateway_ns.run("ip", "-br", "link")
    assert topology.gateway is not None
    topology.gateway.send_signal(signal.SIGTERM)
    assert topology.gateway.wait(15) == 0
    assert "gateway stopped" in topology.gateway_log.read_text()
    assert "sslvpn0" not in topology.gateway_ns.run("ip", "-br", "link")
    client.wait_for("SIGUSR1", timeout=10)  # the client was told and restarts
