"""How a tunnel recovers: DPD actions, partitions, start on traffic, operator actions.

Real IKE cores on both sides of the in-memory wire of `test_esp_tunnel_driver`, with time
moved by hand, so a 90 s partition costs milliseconds. The same behaviours are measured
against strongSwan in `test_interop_recovery.py`.
"""

from __future__ import annotations

from sslvpn.ipsec.ike.constants import ExchangeType
from sslvpn.ipsec.ike.messages import peek_header
from sslvpn.ipsec.ike.sa import IkeState

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
