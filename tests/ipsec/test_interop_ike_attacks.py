"""IKE under attack, on the wire: forged packets from the peer's own address against the real
IPsec service, with strongSwan 5.9 as the genuine peer (the lab of test_interop_strongswan).

The attacker (``ike_attacker.py``, IKE messages built with our own sans-I/O core) runs in
strongSwan's namespace and sends from strongSwan's address: from its own UDP port when it
wants to see the answers, or forging port 500 through a raw socket. Every attack is bounded
in count and time and aimed only at the lab's namespaces.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sslvpn.ipsec.ike import constants as c
from sslvpn.runtime.control import TunnelStatus
from tests.ipsec.strongswan_lab import HOST_A, WAN_A, WAN_B, Charon, CharonConfig, Topology
from tests.ipsec.test_interop_strongswan import Peer, bring_up, peer, ping, topo
from tests.netns import Namespace, file_contains, wait_until

pytestmark = pytest.mark.interop
__all__ = ["peer", "topo"]  # the module-scoped lab fixtures, shared with the interop tests

ATTACKER = Path(__file__).with_name("ike_attacker.py")
IKE, ESP = "aes256gcm16-prfsha256-ecp256", "aes256gcm16"


def attack(ns: Namespace, *args: str, timeout: float = 60) -> dict[str, Any]:
    """Run the attacker to the end; its summary (datagrams sent, answers by kind)."""
    out = ns.run(sys.executable, str(ATTACKER), *args, timeout=timeout)
    summary: dict[str, Any] = json.loads(out.splitlines()[-1])
    return summary


def summary_of(path: Path) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads(path.read_text().splitlines()[-1])
    return summary


def current(peer: Peer) -> TunnelStatus:
    return peer.status() or TunnelStatus("t1", "down", None, None, None, None, 0, 0, 0, 0)


def dropped(peer: Peer, reason: str) -> int:
    return current(peer).ike_drops.get(reason, 0)


def waiting_tunnel(topo: Topology, peer: Peer) -> Charon:
    """A fresh tunnel that waits for strongSwan, which is (re)started and does not initiate."""
    peer.remove_tunnel()
    charon = topo.start_charon(CharonConfig(ike_proposals=IKE, esp_proposals=ESP))
    peer.configure(IKE, ESP, initiate=False)
    peer.wait_state("connecting")
    return charon


def strongswan_initiates(charon: Charon) -> None:
    out = charon.swanctl("--initiate", "--child", "net", "--timeout", "15", check=False)
    assert "completed successfully" in out, out + charon.tail()


def test_init_flood_gets_cookies_and_strongswan_still_brings_the_tunnel_up(
    topo: Topology, peer: Peer
) -> None:
    charon = waiting_tunnel(topo, peer)
    log = topo.workdir / "init-flood.json"
    flood = topo.sitea.spawn([sys.executable, str(ATTACKER), WAN_B, "init", "--rate", "500",
                              "--count", "5000", "--bind", WAN_A, "--mark", "200"], log=log)
    assert wait_until(file_contains(log, "started"), 20)
    started = time.monotonic()
    strongswan_initiates(charon)
    peer.wait_state("up", timeout=15)
    assert time.monotonic() - started < 15
    assert flood.poll() is None, "the flood ended before the tunnel came up: make it longer"
    assert flood.wait(60) == 0
    answers = summary_of(log)
    assert answers.get("full", 0) <= c.COOKIE_THRESHOLD_IP, answers  # one DH each
    assert answers.get("cookie", 0) >= 0.9 * (answers["sent"] - c.COOKIE_THRESHOLD_IP), answers
    status = peer.wait_state("up")
    assert status.ike_half_open_peak <= c.COOKIE_THRESHOLD_IP + 1, status  # + strongSwan's
    assert status.ike_drop_sources, status
    ping(topo.lanb, HOST_A)


def test_forged_inits_do_not_keep_an_initiating_tunnel_down(
    topo: Topology, peer: Peer
) -> None:
    peer.remove_tunnel()
    topo.stop_charon()  # the peer is down: our IKE_SA_INIT goes unanswered for now
    peer.configure(IKE, ESP, initiate=True)
    peer.wait_state("connecting")
    log = topo.workdir / "slow-inits.json"
    forger = topo.sitea.spawn([sys.executable, str(ATTACKER), WAN_B, "init", "--rate", "1",
                               "--count", "40", "--spoof", f"{WAN_A}:500", "--mark", "1"],
                              log=log)
    assert wait_until(file_contains(log, "started"), 10)
    topo.start_charon(CharonConfig(ike_proposals=IKE, esp_proposals=ESP))  # waits for us
    peer.wait_state("up", timeout=25)  # our retransmission or retry reaches it
    assert forger.poll() is None, "the forgeries stopped before the tunnel came up"
    topo.lab.stop(forger)
    ping(topo.lanb, HOST_A)


def test_a_flood_of_many_payload_datagrams_is_cheap_and_pings_go_on(
    topo: Topology, peer: Peer
) -> None:
    bring_up(topo, peer, IKE, ESP, we_initiate=True)
    ping(topo.lanb, HOST_A)
    log = topo.workdir / "payload-flood.json"
    flood = topo.sitea.spawn([sys.executable, str(ATTACKER), WAN_B, "payloads", "--rate",
                              "2000", "--count", "16000", "--bind", WAN_A, "--mark", "1000"],
                             log=log)
    assert wait_until(file_contains(log, "started"), 10)
    out = topo.lanb.run("ping", "-c", "30", "-i", "0.1", "-W", "2", HOST_A, timeout=30)
    assert flood.poll() is None, "the flood ended before the pings: make it longer"
    assert flood.wait(60) == 0
    rtts = sorted(float(line.split("time=")[1].split()[0])
                  for line in out.splitlines() if "time=" in line)
    assert len(rtts) == 30, out
    assert rtts[int(len(rtts) * 0.95) - 1] < 500, rtts  # seconds before the fix
    sent = summary_of(log)["sent"]
    assert wait_until(lambda: dropped(peer, "too-many-payloads") >= 0.9 * sent, 10)
    assert current(peer).state == "up"


def test_init_with_an_unknown_critical_payload_is_refused_as_rfc_7296_says(
    topo: Topology, peer: Peer
) -> None:
    waiting_tunnel(topo, peer)
    answers = attack(topo.sitea, WAN_B, "critical", "--count", "1", "--bind", WAN_A)
    assert answers.get("unsupported-critical") == 1 and "full" not in answers, answers
    assert dropped(peer, "unsupported-critical") == 1 and current(peer).ike_half_open == 0


def test_attacks_are_visible_and_a_psk_guesser_cannot_lock_out_the_peer(
    topo: Topology, peer: Peer
) -> None:
    charon = waiting_tunnel(topo, peer)
    topo.sitea.run(sys.executable, "-c", GARBAGE, WAN_A, WAN_B)
    guesses = c.AUTH_FAILURE_BURST + 2
    outcome = attack(topo.sitea, WAN_B, "guess", "--count", str(guesses), "--bind", WAN_A,
                     "--port", "40000")
    assert outcome.get("auth-failed") == c.AUTH_FAILURE_BURST, outcome
    assert outcome.get("no-answer") == 2, outcome  # throttled: its INITs are ignored
    strongswan_initiates(charon)  # from port 500, which is not locked out
    peer.wait_state("up")
    cli = subprocess.run(
        [str(Path(sys.executable).with_name("sslvpn")), "--data-dir", str(peer.data_dir),
         "ipsec", "status", "--json"], capture_output=True, text=True, check=True)
    (row,) = json.loads(cli.stdout)
    drops = row["ike_drops"]
    assert drops["malformed"] >= 100 and drops["auth-failed"] == c.AUTH_FAILURE_BURST, row
    assert drops["auth-throttled"] == 2, row
    assert row["ike_drop_sources"][f"{WAN_A}:40000"] == c.AUTH_FAILURE_BURST + 2, row
    log = (peer.data_dir / "ipsec.log").read_text()
    assert f"authentication failed from {WAN_A}:40000" in log


GARBAGE = """
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
for _ in range(100):
    s.sendto(os.urandom(60), (sys.argv[2], 500))
    s.sendto(bytes(4) + os.urandom(60), (sys.argv[2], 4500))  # marker + garbage IKE
"""


def test_our_initiator_answers_a_cookie_from_strongswan(topo: Topology, peer: Peer) -> None:
    peer.remove_tunnel()
    charon = topo.start_charon(CharonConfig(ike_proposals=IKE, esp_proposals=ESP,
                                            options={"cookie_threshold": "1"}))
    first = attack(topo.siteb, WAN_A, "init", "--count", "1", "--bind", WAN_B)
    assert first.get("full") == 1, first  # strongSwan now holds one half-open SA
    peer.configure(IKE, ESP, initiate=True)
    peer.wait_state("up")
    assert "N(COOKIE)" in charon.tail(400), charon.tail(400)
    ping(topo.lanb, HOST_A)
