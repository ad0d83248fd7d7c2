"""The protocol cores alone (no runtime, no TUN) against real openvpn 2.6, both ways round.

Two namespaces joined by a veth. Our server (``core_server.py``: ``ServerAcceptor`` +
``ServerSession`` on a UDP socket, answering pings through the tunnel) against the stock
openvpn client: EKM and PRF, TLS 1.3 and 1.2, tls-crypt and tls-crypt-v2, renegotiation
while traffic flows, explicit exit, AUTH_FAILED with a reason for a foreign certificate.
Our client (``core_client.py``: one ``ClientSession``) against the stock openvpn server,
also with its first packet after the reset lost once: 2.6 only admits the retransmission
because it repeats the ACK of the stateless reset (its HMAC cookie, reliable.c lru_acks).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from sslvpn.openvpn.static_key import (
    format_static_key,
    format_tls_crypt_v2_client_key,
    format_tls_crypt_v2_server_key,
    timestamp_metadata,
    wrap_client_key,
)
from tests.netns import Namespace, NetnsLab, file_contains, wait_until
from tests.openvpn.conftest import Issued, Pki
from tests.openvpn.pair import TC_KEY, V2_CLIENT_KEY, V2_SERVER_KEY

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parents[2]
SERVER, CLIENT, VPC_HOST = "198.18.7.1", "198.18.7.2", "10.10.0.10"
CONNECTED = "Initialization Sequence Completed"


@dataclass
class Lab:
    lab: NetnsLab
    server_ns: Namespace
    client_ns: Namespace
    work: Path

    def events(self) -> list[dict[str, object]]:
        path = self.work / "server-events.log"
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line) for line in lines]

    def start_server(self, **conf: object) -> None:
        config = {"dir": str(self.work), "address": SERVER, "port": 1194, "seconds": 60,
                  "log": str(self.work / "server-events.log"), **conf}
        path = self.work / "server.json"
        path.write_text(json.dumps(config))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.server_ns.spawn([sys.executable, "-m", "tests.openvpn.core_server", str(path)],
                             log=self.work / "server.out", env=env)
        if not wait_until(file_contains(self.work / "server-events.log", "listening"), 20):
            pytest.fail("core server did not start: " + _tail(self.work / "server.out"))

    def start_client(self, wrap: str, who: str, *extra: str) -> Path:
        log = self.work / "client.log"
        key_option = ("tls-crypt-v2", "tc2-client.key") if wrap == "tls-crypt-v2" else (
            "tls-crypt", "tc.key")
        self.client_ns.spawn(
            ["openvpn", "--client", "--dev", "tun", "--proto", "udp", "--remote", SERVER,
             "1194", "--nobind", "--remote-cert-tls", "server", "--disable-dco",
             "--ca", str(self.work / "ca.crt"), "--cert", str(self.work / f"{who}.crt"),
             "--key", str(self.work / f"{who}.key"),
             f"--{key_option[0]}", str(self.work / key_option[1]),
             "--explicit-exit-notify", "1", "--verb", "3", "--log", str(log), *extra],
        )
        return log


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"


def _write_pem(path: Path, issued: Issued) -> None:
    path.with_suffix(".crt").write_bytes(
        issued.certificate.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(issued.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    path.with_suffix(".key").chmod(0o600)


def _write_files(pki: Pki, tmp_path: Path) -> None:
    if shutil.which("openvpn") is None:
        pytest.fail("the openvpn binary is required (scripts/install-test-deps)")
    (tmp_path / "ca.crt").write_bytes(
        pki.ca.certificate.public_bytes(serialization.Encoding.PEM))
    for name, issued in (("server", pki.server), ("client", pki.client),
                         ("eve", pki.foreign_client)):
        _write_pem(tmp_path / name, issued)
    (tmp_path / "tc.key").write_text(format_static_key(TC_KEY))
    (tmp_path / "tc2-server.key").write_text(format_tls_crypt_v2_server_key(V2_SERVER_KEY))
    wkc = wrap_client_key(V2_SERVER_KEY, V2_CLIENT_KEY, timestamp_metadata(1_700_000_000))
    (tmp_path / "tc2-client.key").write_text(format_tls_crypt_v2_client_key(V2_CLIENT_KEY, wkc))
    for name in ("tc.key", "tc2-client.key"):
        (tmp_path / name).chmod(0o600)


def _two_namespaces(pki: Pki, tmp_path: Path, prefix: str) -> Iterator[Lab]:
    """A server and a client namespace on one link, with the PKI files; always removed."""
    _write_files(pki, tmp_path)
    netns = NetnsLab(prefix)
    try:
        server_ns, client_ns = netns.namespace("srv"), netns.namespace("cli")
        netns.link(server_ns, f"{SERVER}/24", client_ns, f"{CLIENT}/24")
        yield Lab(netns, server_ns, client_ns, tmp_path)
    finally:
        netns.close()


@pytest.fixture
def lab(pki: Pki, tmp_path: Path) -> Iterator[Lab]:
    yield from _two_namespaces(pki, tmp_path, "c2")


def _connected(lab: Lab, log: Path) -> None:
    if not wait_until(file_contains(log, CONNECTED), 20):
        pytest.fail(f"client did not connect:\n{_tail(log)}\nserver: {lab.events()}")


def _ping(lab: Lab, count: int, interval: str = "0.5") -> None:
    out = lab.client_ns.run("ping", "-c", str(count), "-i", interval, "-W", "2", VPC_HOST,
                            check=False, timeout=count * 3 + 10)
    assert f"{count} received" in out, out


def _stop_client_and_wait_exit(lab: Lab) -> None:
    for proc in lab.lab.processes[1:]:
        lab.lab.stop(proc)
    if not wait_until(lambda: any(e["event"] == "stopped" for e in lab.events()), 15):
        pytest.fail(f"server did not see the exit: {lab.events()}")


def test_tls_crypt_ekm_tls13_with_server_renegotiation(lab: Lab) -> None:
    lab.start_server(wrap="tls-crypt", reneg=3.0)
    log = lab.start_client("tls-crypt", "client")
    _connected(lab, log)
    _ping(lab, 16)  # ~8 s of traffic across at least two key switches
    _stop_client_and_wait_exit(lab)
    events = lab.events()
    established = [e for e in events if e["event"] == "SessionEstablished"]
    assert established and established[0]["key_derivation"] == "tls-ekm"
    assert established[0]["tls_version"] == "TLSv1.3"
    assert [e["key_id"] for e in events if e["event"] == "KeysRenegotiated"][:2] == [1, 2]
    assert any(e["event"] == "ExitRequested" for e in events)
    assert events[-1]["drops"] == {}
    assert "protocol-flags cc-exit tls-ekm" in log.read_text()


def test_tls_crypt_v2_prf_tls12_chacha(lab: Lab) -> None:
    lab.start_server(wrap="tls-crypt-v2", ekm=False, ciphers=["CHACHA20-POLY1305"])
    log = lab.start_client("tls-crypt-v2", "client", "--tls-version-max", "1.2")
    _connected(lab, log)
    _ping(lab, 3, "0.2")
    _stop_client_and_wait_exit(lab)
    established = [e for e in lab.events() if e["event"] == "SessionEstablished"]
    assert established[0]["key_derivation"] == "prf"
    assert established[0]["cipher"] == "CHACHA20-POLY1305"
    assert established[0]["tls_version"] == "TLSv1.2"


def test_foreign_certificate_gets_auth_failed_with_reason(lab: Lab) -> None:
    lab.start_server(wrap="tls-crypt")
    log = lab.start_client("tls-crypt", "eve")
    if not wait_until(file_contains(log, "AUTH_FAILED"), 20):
        pytest.fail(f"no AUTH_FAILED:\n{_tail(log)}\nserver: {lab.events()}")
    assert "AUTH_FAILED,certificate not issued by our CA" in log.read_text()
    refused = [e for e in lab.events() if e["event"] == "PeerRefused"]
    assert refused and "not issued by our CA" in str(refused[0]["reason"])


# -- our client core against the stock openvpn 2.6 server ------------------------------------
@pytest.fixture
def server_lab(pki: Pki, tmp_path: Path) -> Iterator[Lab]:
    yield from _two_namespaces(pki, tmp_path, "sk")


def _start_openvpn_server(lab: Lab, wrap: str) -> Path:
    """Stock settings (the stateless HMAC-cookie handshake of 2.6 is always on for UDP)."""
    log = lab.work / "openvpn-server.log"
    key = ("tls-crypt-v2", "tc2-server.key") if wrap == "tls-crypt-v2" else ("tls-crypt",
                                                                              "tc.key")
    lab.server_ns.spawn(
        ["openvpn", "--mode", "server", "--tls-server", "--proto", "udp", "--local", SERVER,
         "--port", "1194", "--dev", "tun", "--topology", "subnet",
         "--server", "10.8.0.0", "255.255.255.0", "--ca", str(lab.work / "ca.crt"),
         "--cert", str(lab.work / "server.crt"), "--key", str(lab.work / "server.key"),
         "--dh", "none", f"--{key[0]}", str(lab.work / key[1]), "--keepalive", "10", "60",
         "--data-ciphers", "AES-256-GCM", "--disable-dco", "--verb", "3", "--log", str(log)])
    if not wait_until(file_contains(log, CONNECTED), 20):
        pytest.fail(f"openvpn server did not start:\n{_tail(log)}")
    return log


def _run_core_client(lab: Lab, wrap: str, drop: str | None) -> list[dict[str, object]]:
    log = lab.work / "client-events.log"
    path = lab.work / "client.json"
    path.write_text(json.dumps({"dir": str(lab.work), "server": SERVER, "port": 1194,
                                "wrap": wrap, "drop": drop, "seconds": 40, "log": str(log)}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    lab.client_ns.spawn([sys.executable, "-m", "tests.openvpn.core_client", str(path)],
                        log=lab.work / "client.out", env=env)
    if not wait_until(file_contains(log, '"stopped"'), 45):
        pytest.fail("core client did not finish: " + _tail(lab.work / "client.out"))
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.parametrize(
    ("wrap", "drop"),
    [("tls-crypt", None), ("tls-crypt", "CONTROL_V1"), ("tls-crypt-v2", "CONTROL_WKC_V1")],
)
def test_core_client_against_openvpn_server(server_lab: Lab, wrap: str, drop: str | None) -> None:
    server_log = _start_openvpn_server(server_lab, wrap)
    events = _run_core_client(server_lab, wrap, drop)
    kinds = [e["event"] for e in events]
    assert "SessionEstablished" in kinds and "EchoReply" in kinds, (
        f"{events}\nserver:\n{_tail(server_log)}")
    stopped = events[-1]
    assert stopped["dropped"] == ([drop] if drop else [])
    sent = stopped["sent"]
    assert isinstance(sent, list)
    reset = "CONTROL_HARD_RESET_CLIENT_V3" if wrap == "tls-crypt-v2" else \
        "CONTROL_HARD_RESET_CLIENT_V2"
    assert sent.count(reset) == 1  # recovered by retransmitting, not by starting over
    established = next(e for e in events if e["event"] == "SessionEstablished")
    assert established["key_derivation"] == "tls-ekm"
    assert "Peer Connection Initiated" in server_log.read_text()
