"""How a tunnel recovers: DPD actions, partitions, start on traffic, operator actions.

Real IKE cores on both sides of the in-memory wire of `test_esp_tunnel_driver`, with time
moved by hand, so a 90 s partition costs milliseconds. The same behaviours are measured
against strongSwan in `test_interop_recovery.py`.
"""

from __future__ import annotations

from sslvpn.ipsec.ike.constants import ExchangeType
from sslvpn.ipsec.ike.messages import peek_header
from sslvpn.ipsec.ike.sa import IkeState
from sslvpn.runtime.ipsec_tunnel import REKEYED_INBOUND_GRACE

from .ike_pair import config
from .test_esp_tunnel_driver import Lab, bring_up

FAST_DPD = {"dpd_delay": 10.0, "dpd_timeout": 30.0}


def _until(lab: Lab, done: object, limit: float, *peers: object) -> float:
    """Tick one second at a time (delivering to ``peers``, else losing everything) until
    ``done()``; the seconds it took."""
    start = lab.now
    while not done():  # type: ignore[operator]
        assert lab.now - start < limit, f"not within {limit} s: {lab.tunnel!r}"
        lab.tick(1.0)
        if peers:
            lab.run(*peers)  # type: ignore[arg-type]
        else:
            lab.wire.sent.clear()
    return lab.now - start


def test_dead_peer_is_declared_within_delay_plus_timeout_and_restarted_from_init() -> None:
    lab = Lab(**FAST_DPD)
    old = bring_up(lab)
    took = _until(lab, lambda: lab.tunnel.state != "up", 60)
    assert 40 <= took <= 41  # DPD probe at +10 s, given up 30 s later
    assert "peer dead" in (lab.tunnel.last_error or "")
    fresh = lab.tunnel.initiating
    assert fresh is not None and fresh.local_spi != old.local_spi
    lab.tick(1.0)
    for message, _to, _nat_t in lab.wire.sent:  # never again on the SPIs the peer forgot
        header = peek_header(message)
        assert header.exchange == ExchangeType.IKE_SA_INIT and header.spi_i == fresh.local_spi


def test_after_a_90s_partition_traffic_flows_within_30s_of_the_network_returning() -> None:
    lab = Lab(**FAST_DPD)
    bring_up(lab)
    _until(lab, lambda: lab.now >= 10.0 + 90, 200)  # the partition: nothing gets through
    assert lab.tunnel.state != "up"
    peer = lab.peer(7, initiator=False)  # the peer's charon forgot us (or was restarted)
    took = _until(lab, lambda: lab.tunnel.state == "up", 30, peer)
    assert took <= 20  # the back-off is capped at retransmit_limit (20 s)
    assert peer.state is IkeState.ESTABLISHED


def test_an_unanswered_initiation_starts_again_at_once() -> None:
    """Silence was already waited out by the retransmissions; a refusal backs off instead
    (test_initiating_tunnel_retries_with_back_off)."""
    lab = Lab(initiate=True, retransmit_base=1.0, retransmit_tries=1)
    first = lab.tunnel.initiating
    _until(lab, lambda: lab.tunnel.initiating is not first, 10)
    assert "no answer to IKE_SA_INIT" in (lab.tunnel.last_error or "")
    assert lab.tunnel._retry_at == lab.now  # due now, not RETRY_DELAYS later
    lab.tick(0.0)
    assert lab.tunnel.initiating not in (None, first)


def test_start_on_traffic_initiates_on_the_first_packet_only() -> None:
    lab = Lab(start="trap")
    assert lab.tunnel.initiating is None and lab.tunnel.seal(b"\x45" + bytes(19)) is None
    lab.tunnel.on_demand(lab.now)
    first = lab.tunnel.initiating
    assert first is not None
    lab.tunnel.on_demand(lab.now)
    assert lab.tunnel.initiating is first
    waiting = Lab()
    waiting.tunnel.on_demand(waiting.now)
    assert waiting.tunnel.initiating is None


def test_dpd_clear_waits_for_traffic_and_none_for_the_peer_only() -> None:
    for action, restarts in (("clear", True), ("none", False)):
        lab = Lab(start="trap", dpd_action=action, **FAST_DPD)
        bring_up(lab)
        _until(lab, lambda lab=lab: lab.tunnel.state != "up", 60)  # type: ignore[misc]
        assert lab.tunnel.state == "down" and lab.tunnel.initiating is None
        lab.tick(100.0)
        assert lab.tunnel.initiating is None  # nothing retries by itself
        lab.tunnel.on_demand(lab.now)
        assert (lab.tunnel.initiating is not None) is restarts
        comeback = lab.peer(9)
        comeback.initiate(lab.now)
        lab.run(comeback)
        assert lab.tunnel.state == "up"  # the peer may always bring it back


def test_operator_restart_and_down() -> None:
    lab = Lab()
    peer = bring_up(lab)
    lab.tunnel.restart(lab.now)
    assert lab.tunnel.sa is None and lab.tunnel.initiating is not None
    responder = lab.peer(3, initiator=False)
    lab.to_peers(peer, responder)
    assert peer.state is IkeState.CLOSED  # our DELETE reached it
    lab.run(responder)
    assert lab.tunnel.state == "up" and responder.state is IkeState.ESTABLISHED
    lab.tunnel.terminate(lab.now)
    lab.to_peers(responder)
    assert lab.tunnel.state == "down" and responder.state is IkeState.CLOSED
    lab.tick(600.0)
    lab.tunnel.on_demand(lab.now)
    assert lab.tunnel.initiating is None and not lab.wire.sent
    again = lab.peer(4)
    again.initiate(lab.now)
    lab.run(again)
    assert lab.tunnel.state == "up"


def test_the_old_inbound_sa_outlives_its_delete_by_the_grace_period() -> None:
    """As strongSwan's delete_rekeyed_delay: ESP the peer sent on the old SA just before
    its DELETE still gets in for REKEYED_INBOUND_GRACE seconds, then the SA goes."""
    lab = Lab()
    peer = bring_up(lab)
    (old,) = peer.children
    old_spi = int.from_bytes(old.spi_out, "big")  # the tunnel's inbound SPI
    peer.rekey_child(lab.now)
    lab.run(peer)  # new CHILD_SA, then the peer's DELETE of the old one
    assert len(peer.children) == 1 and peer.children[0] is not old
    assert old_spi in lab.sad and lab.tunnel.status(lab.now).spi_in != f"{old_spi:08x}"
    lab.tick(REKEYED_INBOUND_GRACE - 1)
    assert old_spi in lab.sad
    lab.tick(1.0)
    assert old_spi not in lab.sad and len(lab.sad) == 1
    assert lab.tunnel.rekeys["child"] == 1 and lab.tunnel.state == "up"


def test_rekeys_the_peer_refuses_leave_the_tunnel_up() -> None:
    """NO_PROPOSAL_CHOSEN to our IKE rekey and to our CHILD_SA rekey: the SAs in use stay,
    traffic goes on, the reason shows in last_error (before: the tunnel started afresh)."""
    lab = Lab()
    peer = bring_up(lab)
    live, outbound = lab.tunnel.sa, lab.tunnel.outbound
    peer.config = config("A", ike="aes128gcm16-prfsha256-ecp384", esp="aes128gcm16")
    for action in ("rekey-ike", "rekey-child"):
        (lab.tunnel.rekey_ike if action == "rekey-ike" else lab.tunnel.rekey_child)(lab.now)
        lab.run(peer)
        assert lab.tunnel.state == "up" and lab.tunnel.sa is live
        assert lab.tunnel.outbound is outbound and lab.tunnel.initiating is None
        assert "no_proposal_chosen" in (lab.tunnel.last_error or "").replace(" ", "_").lower()
    assert live is not None and live.ike_rekey_at <= lab.now + 45


def test_the_rekey_responder_sends_on_the_new_sa_only_once_the_old_one_goes() -> None:
    """As strongSwan: answering the peer's CHILD_SA rekey, the tunnel installs the new SA
    inbound at once but keeps sending on the old one until the peer (which installs the
    new one only on reading our answer) deletes it: no packet goes to an SPI the peer
    does not know yet (one ping was lost so under load, crossing rekeys with strongSwan)."""
    lab = Lab()
    peer = bring_up(lab)
    old_out = lab.tunnel.outbound
    assert old_out is not None
    peer.rekey_child(lab.now)
    lab.to_tunnel(peer)  # the peer's CREATE_CHILD_SA: answered, the answer not yet delivered
    assert lab.tunnel.outbound is old_out and len(lab.sad) == 2  # new one inbound only
    lab.run(peer)  # the answer reaches the peer, which installs the SA and deletes the old
    assert lab.tunnel.outbound is not old_out and lab.tunnel.outbound is not None
    assert lab.tunnel.outbound.spi == int.from_bytes(peer.children[0].spi_in, "big")
    assert lab.tunnel.state == "up" and lab.tunnel.rekeys["child"] == 1
