"""sslvpn's IPsec peer against a real strongSwan 5.9 charon (kernel-libipsec) in namespaces.

One topology and one sslvpn IPsec service for the module; each test reconfigures the tunnel
through the store (as `sslvpn ipsec ...` does) and charon through its own swanctl.conf.
Hosts behind each side ping each other and move data through the tunnel.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
from click.testing import CliRunner

from sslvpn.cli import main
from sslvpn.config import DataPaths
from sslvpn.ipsec.ike.fragments import MIN_FRAGMENT_DATAGRAM
from sslvpn.runtime.control import TunnelStatus
from sslvpn.runtime.control_server import ControlClient, ControlError
from sslvpn.store import ipsec_queries as q
from sslvpn.store.db import open_engine, session, upgrade
from tests.ipsec.strongswan_lab import (
    HOST_A,
    HOST_B,
    LAN_A,
    LAN_B,
    PSK,
    WAN_A,
    WAN_B,
    Charon,
    CharonConfig,
    Topology,
)
from tests.netns import Namespace, wait_until

pytestmark = pytest.mark.interop

PEER_SCRIPT = Path(__file__).with_name("ipsec_peer.py")
TIMERS = {"dpd_delay": 3.0, "retransmit_base": 1.0, "retransmit_tries": 3}
PROPOSALS = [
    ("aes256gcm16-prfsha256-modp2048", "aes256gcm16", "MODP_2048"),
    ("aes256gcm16-prfsha256-ecp256", "aes256-sha256", "ECP_256"),
    ("aes256gcm16-prfsha256-curve25519", "aes256gcm16", "CURVE_25519"),
    ("aes256-sha256-modp2048", "aes256-sha256", "MODP_2048"),
    ("aes256-sha256-ecp256", "aes256gcm16", "ECP_256"),
    ("aes256-sha256-curve25519", "aes256-sha256", "CURVE_25519"),
]
PROPOSAL_IDS = [f"{ike}/{esp}" for ike, esp, _ in PROPOSALS]
ESP_NAMES = {"aes256gcm16": "AES_GCM_16-256", "aes256-sha256": "AES_CBC-256/HMAC_SHA2_256_128"}


class Peer:
    """Our side: a data folder configured through the store and the service process."""

    def __init__(self, topo: Topology, data_dir: Path,
                 timers: dict[str, float] | None = None) -> None:
        self.topo = topo
        self.data_dir = data_dir
        data_dir.mkdir()
        self.engine = open_engine(f"sqlite:///{data_dir / 'sslvpn.db'}")
        upgrade(self.engine)
        with session(self.engine) as s:
            q.create_vpn_gateway(s, name="vgw", public_address=WAN_B)
            q.create_customer_gateway(s, name="dc1", address=WAN_A)
        self.proc = topo.siteb.spawn(
            [sys.executable, str(PEER_SCRIPT), str(data_dir),
             json.dumps(TIMERS if timers is None else timers)],
            log=data_dir / "stdout.log",
        )
        self.control = ControlClient(DataPaths(data_dir).control_socket, timeout=5)

    def remove_tunnel(self) -> None:
        """Delete the tunnel and wait until the service has dropped it."""
        with session(self.engine) as s:
            if any(t.name == "t1" for t in q.list_tunnels(s)):
                q.delete_tunnel(s, name="t1")
        assert wait_until(lambda: self.status() is None and self._answers(), 10, 0.1)

    def _answers(self) -> bool:
        try:
            self.control.tunnel_status()
        except ControlError:
            return False
        return True

    def configure(self, ike: str, esp: str, *, initiate: bool, psk: str = PSK,
                  settings: dict[str, object] | None = None) -> None:
        """A fresh tunnel t1; ``settings``: its timers (`TunnelSettings` names)."""
        self.remove_tunnel()
        with session(self.engine) as s:
            q.create_tunnel(s, name="t1", gateway="vgw", customer_gateway="dc1", psk=psk,
                            ike_proposals=ike, esp_proposals=esp,
                            start_action="initiate" if initiate else "wait",
                            settings=settings)
            q.add_policy(s, tunnel="t1", local_cidr=LAN_B, peer_cidr=LAN_A)

    def status(self) -> TunnelStatus | None:
        try:
            rows = self.control.tunnel_status()
        except ControlError:
            return None
        return rows[0] if rows else None

    def wait_state(self, state: str, timeout: float = 30) -> TunnelStatus:
        def reached() -> bool:
            current = self.status()
            return current is not None and current.state == state

        assert wait_until(reached, timeout, 0.2), f"not {state}: {self.status()}\n{self.log()}"
        status = self.status()
        assert status is not None
        return status

    def log(self) -> str:
        try:
            return "\n".join((self.data_dir / "ipsec.log").read_text().splitlines()[-30:])
        except FileNotFoundError:
            return "(no log)"

    def close(self) -> None:
        self.topo.lab.stop(self.proc)
        self.engine.dispose()


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    topology = Topology(tmp_path_factory.mktemp("si-lab"))
    try:
        yield topology
    finally:
        topology.close()


@pytest.fixture(scope="module")
def peer(topo: Topology, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    ours = Peer(topo, tmp_path_factory.mktemp("si-peer") / "data")
    try:
        yield ours
    finally:
        ours.close()


def bring_up(topo: Topology, peer: Peer, ike: str, esp: str, *, we_initiate: bool,
             dpd_delay: str = "5s", ours: tuple[str, str] | None = None) -> None:
    """charon with ``ike``/``esp``, our tunnel with ``ours`` (default: the same)."""
    peer.remove_tunnel()
    topo.start_charon(CharonConfig(ike_proposals=ike, esp_proposals=esp, dpd_delay=dpd_delay))
    peer.configure(*(ours or (ike, esp)), initiate=we_initiate)
    assert topo.charon is not None
    connect(topo.charon, peer, we_initiate=we_initiate)


def connect(charon: Charon, peer: Peer, *, we_initiate: bool) -> None:
    """Our tunnel, just configured, comes up: when it waits, charon initiates."""
    if not we_initiate:
        peer.wait_state("connecting")
        out = charon.swanctl("--initiate", "--child", "net", "--timeout", "20", check=False)
        assert "completed successfully" in out, out + charon.tail()
    peer.wait_state("up")


def ping(src: Namespace, dst: str, count: int = 3) -> None:
    assert wait_until(lambda: src.ok("ping", "-c", "1", "-W", "1", dst), 15, 0.2), f"no path {dst}"
    out = src.run("ping", "-c", str(count), "-i", "0.2", "-W", "2", dst)
    assert f"{count} received" in out, out


@pytest.mark.parametrize("we_initiate", [True, False], ids=["we-initiate", "strongswan-initiates"])
@pytest.mark.parametrize(("ike", "esp", "group"), PROPOSALS, ids=PROPOSAL_IDS)
def test_tunnel_comes_up_and_carries_pings(
    topo: Topology, peer: Peer, ike: str, esp: str, group: str, we_initiate: bool
) -> None:
    bring_up(topo, peer, ike, esp, we_initiate=we_initiate)
    ping(topo.lanb, HOST_A)
    ping(topo.lana, HOST_B)
    assert topo.charon is not None
    sas = topo.charon.list_sas()
    assert "ESTABLISHED" in sas and "INSTALLED" in sas and group in sas, sas
    assert ESP_NAMES[esp] in sas, sas
    status = peer.wait_state("up")
    assert status.packets_in >= 3 and status.packets_out >= 3 and status.spi_in and status.spi_out
    assert status.spi_in in sas and status.spi_out in sas  # the same SPIs on both sides


# charon's proposals against our tunnel's defaults (a tunnel added without --ike/--esp):
# strongSwan's own default list, and the single proposals data-centre gateways start with
DEFAULT_CASES = [
    ("default", "default"),
    ("aes256-sha256-modp2048", "aes256-sha256"),
    ("aes256-sha256-ecp256", "aes128-sha384"),
    ("aes256-sha256-curve25519", "aes256-sha512"),
    ("aes256gcm16-prfsha384-ecp384", "aes256gcm16"),
]


@pytest.mark.parametrize("we_initiate", [True, False], ids=["we-initiate", "strongswan-initiates"])
@pytest.mark.parametrize(("ike", "esp"), DEFAULT_CASES, ids=[c[0] for c in DEFAULT_CASES])
def test_our_default_proposals_meet_strongswan(
    topo: Topology, peer: Peer, ike: str, esp: str, we_initiate: bool
) -> None:
    bring_up(topo, peer, ike, esp, we_initiate=we_initiate, ours=("default", "default"))
    ping(topo.lanb, HOST_A)
    ping(topo.lana, HOST_B)
    status = peer.wait_state("up")
    assert status.ike_proposal and status.esp_proposal, status
    if ike != "default":  # charon offered one suite: we negotiated exactly it
        assert (status.ike_proposal, status.esp_proposal) == (ike, esp)
    shown = CliRunner().invoke(main, ["--data-dir", str(peer.data_dir), "ipsec", "status"]
                               ).output
    assert (f"t1: negotiated ike {status.ike_proposal}, esp {status.esp_proposal}"
            in shown), shown


@pytest.mark.parametrize("we_initiate", [True, False], ids=["we-initiate", "strongswan-initiates"])
def test_charon_runs_from_the_swanctl_conf_we_render(
    topo: Topology, peer: Peer, we_initiate: bool
) -> None:
    """The customer gateway's side, as `sslvpn ipsec tunnel config --format swanctl` prints
    it, is all charon gets: it loads, and the tunnel comes up and carries traffic. When we
    wait, the rendered config starts the tunnel itself (start_action = start)."""
    peer.remove_tunnel()
    peer.configure("default", "default", initiate=we_initiate, settings={"dpd_delay": 5.0})
    result = CliRunner().invoke(main, ["--data-dir", str(peer.data_dir), "ipsec", "tunnel",
                                       "config", "t1", "--format", "swanctl", "--include-psk"])
    assert result.exit_code == 0, result.output
    (topo.workdir / f"rendered-{we_initiate}.swanctl.conf").write_text(result.output)
    charon = topo.start_charon(CharonConfig(swanctl_conf=result.output))
    assert "loaded connection 't1'" in charon.swanctl("--load-all", "--file",
                                                      str(charon.swanctl_conf))
    status = peer.wait_state("up", timeout=40)
    ping(topo.lanb, HOST_A)
    ping(topo.lana, HOST_B)
    sas = charon.list_sas()
    assert "ESTABLISHED" in sas and "INSTALLED" in sas and status.spi_in in sas, sas
    assert status.ike_proposal == "aes256gcm16-prfsha512-ecp521", status
    assert status.esp_proposal == "aes256gcm16", status


@pytest.mark.parametrize("we_initiate", [True, False], ids=["we-initiate", "strongswan-initiates"])
def test_strongswans_fragmented_ike_auth_is_reassembled(
    topo: Topology, peer: Peer, we_initiate: bool
) -> None:
    """charon with 200-byte IKE datagrams (fragment_size) splits its IKE_AUTH (RFC 7383,
    negotiated in IKE_SA_INIT): we reassemble it and the tunnel carries traffic."""
    ike, esp = "aes256-sha256-modp2048", "aes256gcm16"
    peer.remove_tunnel()
    charon = topo.start_charon(CharonConfig(ike_proposals=ike, esp_proposals=esp,
                                            options={"fragment_size": "200"}))
    peer.configure(ike, esp, initiate=we_initiate)
    connect(charon, peer, we_initiate=we_initiate)
    ping(topo.lanb, HOST_A)
    log = charon.log.read_text()
    assert re.search(r"generating IKE_AUTH (request|response) 1 \[ EF\(1/[2-9]\) \]", log), (
        charon.tail(60))
    assert not (peer.status() or _down()).ike_drops, peer.status()


@pytest.mark.parametrize("we_initiate", [True, False], ids=["we-initiate", "strongswan-initiates"])
def test_our_fragmented_ike_auth_is_reassembled_by_strongswan(
    topo: Topology, peer: Peer, we_initiate: bool
) -> None:
    """Our tunnel at its smallest fragment size (a path with a small MTU) splits its
    IKE_AUTH request or response (RFC 7383): charon reassembles the fragments, none of which
    is larger than the setting, and the tunnel carries traffic both ways."""
    ike, esp = "aes256-sha256-modp2048", "aes256gcm16"
    peer.remove_tunnel()
    charon = topo.start_charon(CharonConfig(ike_proposals=ike, esp_proposals=esp,
                                            extra_log={"net": 1}))
    mark = charon.log.stat().st_size  # the log is appended to by every test of the module
    peer.configure(ike, esp, initiate=we_initiate,
                   settings={"fragment_size": MIN_FRAGMENT_DATAGRAM})
    connect(charon, peer, we_initiate=we_initiate)
    ping(topo.lanb, HOST_A)
    ping(topo.lana, HOST_B)
    log = charon.log.read_bytes()[mark:].decode(errors="replace")
    ours = "request" if we_initiate else "response"
    # charon logs each datagram's IKE message size, then parses it as one fragment
    fragments = [int(n) for n in re.findall(
        rf"received packet: from \S+ to \S+ \((\d+) bytes\)\n[^\n]*parsed IKE_AUTH {ours} 1 "
        r"\[ EF\(\d/\d\) \]\n[^\n]*received fragment #\d of \d, (?:waiting|reassembled)", log)]
    assert len(fragments) >= 2, charon.tail(60)
    assert re.search(r"received fragment #\d of \d, reassembled fragmented IKE message \(\d+ "
                     rf"bytes\)\n[^\n]*parsed IKE_AUTH {ours} 1 \[ ID[ir] ", log), charon.tail(60)
    # each fragment's datagram: the message, the non-ESP marker, UDP and IPv4 headers
    assert max(fragments) + 4 + 8 + 20 <= MIN_FRAGMENT_DATAGRAM, fragments


RECEIVER = """
import hashlib, socket, sys
srv = socket.create_server((sys.argv[1], 5001))
conn, _ = srv.accept()
h = hashlib.sha256(); n = 0
while chunk := conn.recv(65536):
    h.update(chunk); n += len(chunk)
print(n, h.hexdigest(), flush=True)
"""
SENDER = """
import socket, sys, time
data = bytes.fromhex(sys.argv[3]) * (int(sys.argv[2]) // 32)
pace = float(sys.argv[4])  # seconds per 64 KiB: keeps the stream running through the rekeys
with socket.create_connection((sys.argv[1], 5001), timeout=60) as c:
    view = memoryview(data)
    for i in range(0, len(data), 1 << 16):
        c.sendall(view[i:i + (1 << 16)])
        time.sleep(pace)
"""


def test_20mb_stream_and_pings_survive_rekeys_of_both_sides(topo: Topology, peer: Peer) -> None:
    bring_up(topo, peer, "aes256gcm16-prfsha256-curve25519", "aes256gcm16", we_initiate=True)
    ping(topo.lanb, HOST_A)
    charon = topo.charon
    assert charon is not None
    size = 20 * 1024 * 1024
    seed = hashlib.sha256(b"si").digest()
    expected = hashlib.sha256(seed * (size // 32)).hexdigest()
    out_file = topo.workdir / "received.txt"
    receiver = topo.lana.spawn([sys.executable, "-c", RECEIVER, HOST_A], log=out_file)
    assert wait_until(lambda: ":5001" in topo.lana.run("ss", "-ltn"), 10)
    sender = topo.lanb.spawn([sys.executable, "-c", SENDER, HOST_A, str(size), seed.hex(),
                              "0.025"])  # 320 chunks: about 8 s
    pings = topo.lanb.spawn(["ping", "-i", "0.05", "-c", "120", "-W", "2", HOST_A],
                            log=topo.workdir / "ping.txt")
    spis = [peer.wait_state("up").spi_out]

    def new_child_sa() -> bool:
        current = peer.status()
        return current is not None and current.state == "up" and current.spi_out not in spis

    child_rekeys: list[Callable[[], object]] = [
        lambda: charon.swanctl("--rekey", "--child", "net"),  # strongSwan rekeys
        lambda: os.kill(peer.proc.pid, signal.SIGUSR1),  # we rekey
    ]
    ike_rekeys: list[Callable[[], object]] = [
        lambda: charon.swanctl("--rekey", "--ike", "site"),
        lambda: os.kill(peer.proc.pid, signal.SIGUSR2),
    ]
    for rekey in child_rekeys:
        rekey()
        assert wait_until(new_child_sa, 20, 0.05), peer.status()
        spis.append(peer.wait_state("up").spi_out)
    for index, rekey in enumerate(ike_rekeys):
        rekey()
        assert wait_until(partial(_ike_rekeys_reach, charon, index + 1), 20)
    assert sender.poll() is None, "the transfer ended before the rekeys: pace it slower"
    assert sender.wait(120) == 0
    assert receiver.wait(60) == 0
    count, digest = out_file.read_text().split()
    assert (int(count), digest) == (size, expected)
    pings.wait(30)
    assert "120 received" in (topo.workdir / "ping.txt").read_text()
    after = peer.wait_state("up")
    assert after.bytes_in + after.bytes_out > size
    assert after.spi_out == spis[-1] and len(set(spis)) == 3
    ping(topo.lana, HOST_B)


def test_a_fast_stream_into_our_lan_arrives_intact(topo: Topology, peer: Peer) -> None:
    """lana -> lanb at full speed: our TUN merges the decrypted segments into GSO writes."""
    bring_up(topo, peer, "aes256gcm16-prfsha256-ecp256", "aes256gcm16", we_initiate=True)
    ping(topo.lana, HOST_B)
    size = 64 * 1024 * 1024
    seed = hashlib.sha256(b"inbound").digest()
    out_file = topo.workdir / "received-inbound.txt"
    receiver = topo.lanb.spawn([sys.executable, "-c", RECEIVER, HOST_B], log=out_file)
    assert wait_until(lambda: ":5001" in topo.lanb.run("ss", "-ltn"), 10)
    packets_before, skbs_before = peer.wait_state("up").packets_in, _ip_in_receives(topo.lanb)
    sender = topo.lana.spawn([sys.executable, "-c", SENDER, HOST_B, str(size), seed.hex(), "0"])
    assert sender.wait(120) == 0
    assert receiver.wait(60) == 0
    count, digest = out_file.read_text().split()
    assert (int(count), digest) == (size, hashlib.sha256(seed * (size // 32)).hexdigest())
    packets = peer.wait_state("up").packets_in - packets_before
    skbs = _ip_in_receives(topo.lanb) - skbs_before
    assert skbs < packets / 2, f"{packets} ESP packets reached lanb as {skbs} IP receives"


def _ip_in_receives(ns: Namespace) -> int:
    """The namespace's IP InReceives: one per packet the stack took in (a GSO batch is one)."""
    lines = [line.split() for line in ns.run("cat", "/proc/net/snmp").splitlines()
             if line.startswith("Ip:")]
    return int(lines[1][lines[0].index("InReceives")])


def _ike_rekeys_reach(charon: Charon, count: int) -> bool:
    return charon.log.read_text().count(" rekeyed between ") >= count


@pytest.mark.parametrize("we_initiate", [True, False], ids=["we-initiate", "strongswan-initiates"])
def test_wrong_psk_fails_clearly_on_both_sides(
    topo: Topology, peer: Peer, we_initiate: bool
) -> None:
    ike, esp = "aes256gcm16-prfsha256-ecp256", "aes256gcm16"
    peer.remove_tunnel()
    charon = topo.start_charon(CharonConfig(ike_proposals=ike, esp_proposals=esp))
    peer.configure(ike, esp, initiate=we_initiate, psk="si-WRONG-psk-0123456789abcdef")
    if not we_initiate:
        peer.wait_state("connecting")
        out = charon.swanctl("--initiate", "--child", "net", "--timeout", "20", check=False)
        assert "AUTHENTICATION_FAILED" in out or "failed" in out, out
    assert wait_until(lambda: "authentication" in ((peer.status() or _down()).last_error or ""),
                      30, 0.2), peer.status()
    status = peer.status()
    assert status is not None and status.state != "up"
    # strongSwan's side: a MAC mismatch as responder, an AUTHENTICATION_FAILED notify as initiator
    assert wait_until(lambda: "failed" in charon.tail(200).lower(), 10)
    log = charon.tail(200)
    assert "MAC mismatched" in log or "AUTHENTICATION_FAILED" in log, log
    assert "ESTABLISHED" not in charon.list_sas()
    cli = subprocess.run(
        [str(Path(sys.executable).with_name("sslvpn")), "--data-dir", str(peer.data_dir),
         "ipsec", "status", "--json"], capture_output=True, text=True, check=False)
    rows = json.loads(cli.stdout)
    assert rows[0]["state"] != "up" and "authentication" in rows[0]["last_error"], cli.stdout


def test_admin_down_deletes_the_sa_and_up_restores_it(topo: Topology, peer: Peer) -> None:
    bring_up(topo, peer, "aes256-sha256-curve25519", "aes256gcm16", we_initiate=True)
    ping(topo.lanb, HOST_A)
    charon = topo.charon
    assert charon is not None
    sslvpn = [str(Path(sys.executable).with_name("sslvpn")), "--data-dir", str(peer.data_dir)]
    subprocess.run([*sslvpn, "ipsec", "down", "t1"], check=True, capture_output=True)
    peer.wait_state("down")
    assert wait_until(lambda: "ESTABLISHED" not in charon.list_sas(), 10)  # our DELETE arrived
    assert not topo.lanb.ok("ping", "-c", "1", "-W", "1", HOST_A)
    subprocess.run([*sslvpn, "ipsec", "up", "t1"], check=True, capture_output=True)
    peer.wait_state("up")
    ping(topo.lanb, HOST_A)
    table = subprocess.run([*sslvpn, "ipsec", "status"], check=True, capture_output=True,
                           text=True).stdout
    assert "t1" in table and " up " in table, table


def test_one_tcp_stream_through_the_tunnel_with_iperf3(topo: Topology, peer: Peer) -> None:
    bring_up(topo, peer, "aes256gcm16-prfsha256-ecp256", "aes256gcm16", we_initiate=True)
    ping(topo.lanb, HOST_A)
    server = topo.lana.spawn(["iperf3", "-s", "-1", "-B", HOST_A])
    assert wait_until(lambda: ":5201" in topo.lana.run("ss", "-ltn"), 10)
    result = json.loads(topo.lanb.run("iperf3", "-c", HOST_A, "-t", "3", "-J", timeout=60))
    server.wait(10)
    received = result["end"]["sum_received"]
    assert received["bytes"] > 0
    assert topo.charon is not None
    (topo.workdir / "iperf3.txt").write_text(  # the figures for the closing note
        f"{received['bits_per_second'] / 1e6:.1f} Mbit/s received, one TCP stream, "
        f"lanb -> lana through sslvpn and strongSwan\n{topo.charon.list_sas()}"
    )


def _down() -> TunnelStatus:
    return TunnelStatus("t1", "down", None, None, None, None, 0, 0, 0, 0)


def test_dead_strongswan_is_detected_and_the_tunnel_returns(topo: Topology, peer: Peer) -> None:
    ike, esp = "aes256-sha256-ecp256", "aes256-sha256"
    bring_up(topo, peer, ike, esp, we_initiate=True, dpd_delay="3s")
    ping(topo.lanb, HOST_A)
    assert topo.charon is not None and topo.charon.proc is not None
    os.kill(topo.charon.proc.pid, signal.SIGKILL)  # no DELETE: only DPD can notice
    topo.charon.proc.wait(10)
    assert wait_until(lambda: "peer dead" in ((peer.status() or _down()).last_error or ""),
                      40, 0.2), f"{peer.status()}\n{peer.log()}"
    topo.charon.proc = None
    topo.charon.start()  # the same configuration comes back
    peer.wait_state("up", timeout=60)
    ping(topo.lanb, HOST_A)
    ping(topo.lana, HOST_B)


SPOOFER = """
import os, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
init = os.urandom(8) + bytes(8) + bytes((0, 0x20, 34, 0x08)) + struct.pack("!II", 0, 28)
for _ in range(50):
    s.sendto(init, (sys.argv[2], 500))  # unauthenticated IKE_SA_INIT "from the peer"
    s.sendto(os.urandom(60), (sys.argv[2], 500))
    s.sendto(os.urandom(80), (sys.argv[2], 4500))  # ESP with unknown SPIs
    s.sendto(bytes(4) + os.urandom(40), (sys.argv[2], 4500))  # marker + garbage IKE
    s.sendto(b"\\x01\\x02", (sys.argv[2], 4500))
"""


def test_spoofed_and_garbage_datagrams_do_not_disturb_the_tunnel(
    topo: Topology, peer: Peer
) -> None:
    bring_up(topo, peer, "aes256gcm16-prfsha256-ecp256", "aes256gcm16", we_initiate=False)
    ping(topo.lanb, HOST_A)
    before = peer.wait_state("up")
    topo.sitea.run(sys.executable, "-c", SPOOFER, WAN_A, WAN_B)
    ping(topo.lanb, HOST_A)
    ping(topo.lana, HOST_B)
    after = peer.wait_state("up")
    assert (after.spi_in, after.spi_out) == (before.spi_in, before.spi_out)
    assert topo.charon is not None and topo.charon.established()


def test_restarted_strongswan_replaces_the_old_sa(topo: Topology, peer: Peer) -> None:
    ike, esp = "aes256-sha256-modp2048", "aes256gcm16"
    peer.remove_tunnel()
    charon = topo.start_charon(CharonConfig(ike_proposals=ike, esp_proposals=esp,
                                            start_action="start", dpd_delay="30s"))
    peer.configure(ike, esp, initiate=False)
    before = peer.wait_state("up")
    ping(topo.lanb, HOST_A)
    assert charon.proc is not None
    os.kill(charon.proc.pid, signal.SIGKILL)  # no DELETE; it comes back with INITIAL_CONTACT
    charon.proc.wait(10)
    charon.proc = None
    charon.start()

    def replaced() -> bool:
        current = peer.status()
        return current is not None and current.state == "up" and current.spi_in != before.spi_in

    assert wait_until(replaced, 30, 0.2), f"{peer.status()}\n{peer.log()}"
    ping(topo.lanb, HOST_A)
    ping(topo.lana, HOST_B)


@pytest.mark.parametrize(
    ("ours", "theirs", "we_initiate", "expected"),
    [
        (("aes256gcm16-prfsha256-ecp256", "aes256gcm16"),
         ("aes256-sha256-modp2048", "aes256gcm16"), True, "no proposal chosen"),
        (("aes256-sha256-ecp256", "aes256gcm16"),
         ("aes256-sha256-ecp256", "aes256-sha256"), False, "proposal"),
    ],
    ids=["ike-mismatch-we-initiate", "esp-mismatch-strongswan-initiates"],
)
def test_proposal_mismatch_gives_a_clear_status(
    topo: Topology, peer: Peer, ours: tuple[str, str], theirs: tuple[str, str],
    we_initiate: bool, expected: str,
) -> None:
    peer.remove_tunnel()
    charon = topo.start_charon(CharonConfig(ike_proposals=theirs[0], esp_proposals=theirs[1]))
    peer.configure(*ours, initiate=we_initiate)
    if not we_initiate:
        peer.wait_state("connecting")
        out = charon.swanctl("--initiate", "--child", "net", "--timeout", "20", check=False)
        assert "NO_PROPOSAL_CHOSEN" in out or "failed" in out, out
    assert wait_until(lambda: expected in ((peer.status() or _down()).last_error or "").lower(),
                      30, 0.2), f"{peer.status()}\n{peer.log()}"
    assert (peer.status() or _down()).state != "up"
    assert "INSTALLED" not in charon.list_sas()


def test_both_sides_initiating_at_once_settle_on_one_working_tunnel(
    topo: Topology, peer: Peer
) -> None:
    ike, esp = "aes256gcm16-prfsha256-curve25519", "aes256-sha256"
    peer.remove_tunnel()
    peer.configure(ike, esp, initiate=True)  # we start while charon is still coming up ...
    topo.start_charon(CharonConfig(ike_proposals=ike, esp_proposals=esp, start_action="start"))
    peer.wait_state("up", timeout=40)  # ... and charon initiates on start as well
    ping(topo.lanb, HOST_A)
    ping(topo.lana, HOST_B)
