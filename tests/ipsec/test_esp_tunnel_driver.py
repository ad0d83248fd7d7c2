"""The per-tunnel driver's decisions, with real IKE cores on both sides of an in-memory wire.

What matters here is how `Tunnel` treats its IKE SAs: only a completed IKE_AUTH replaces the
live SA, forged IKE_SA_INITs from the peer's address never touch the live SA or our own
initiation (they get COOKIEs once the peer has a few half-open SAs), the real peer still
gets in during a flood, CHILD_SAs land in the SAD, failures of an initiating tunnel are
retried with back-off, and authentication failures are named, counted and throttled.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from sslvpn.ipsec.esp.sad import Sad
from sslvpn.ipsec.ike import constants as c
from sslvpn.ipsec.ike.admission import InitGate
from sslvpn.ipsec.ike.constants import NON_ESP_MARKER
from sslvpn.ipsec.ike.sa import IkeSa, IkeState
from sslvpn.runtime.ipsec_tunnel import Tunnel
from sslvpn.store.ipsec_queries import TunnelConfig

from .ike_pair import A_ADDR, B_ADDR, config, seeded

IKE = "aes256-sha256-ecp256"
GENUINE = (A_ADDR, 500), (A_ADDR, 4500)


class Wire:
    """Stands in for the service's sockets: what the tunnel sent, for the test to deliver."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int], bool]] = []

    def send_ike(self, message: bytes, peer: tuple[str, int], nat_t: bool) -> None:
        self.sent.append((message, peer, nat_t))


class Lab:
    """One tunnel at B_ADDR (timers fired by hand) and the peer's IKE cores at A_ADDR."""

    def __init__(self, *, initiate: bool = False, start: str | None = None,
                 dpd_action: str = "restart", **timers: float) -> None:
        self.gate = InitGate(rand=seeded(5))
        self.wire = Wire()
        self.sad: Sad[Tunnel] = Sad()
        tunnel_config = TunnelConfig("t1", "vgw", B_ADDR, A_ADDR, "psk", IKE, "aes256gcm16",
                                     start or ("initiate" if initiate else "wait"), True, None,
                                     (("10.2.0.0/24", "10.1.0.0/24"),),
                                     timers={"dpd_action": dpd_action})
        self.tunnel = Tunnel(tunnel_config, config("B", ike=IKE, **timers), self.wire,  # type: ignore[arg-type]
                             self.sad, gate=self.gate, local_ike=(B_ADDR, 500), ike_port=500,
                             nat_t_port=4500, rand=seeded(6))
        self.tunnel._schedule = lambda now: None  # type: ignore[method-assign]
        self.now = 10.0
        self.forged = 0
        self.tunnel.start(self.now)

    def peer(self, seed: int, *, psk: bytes = b"lab-psk-0123456789abcdef",
             initiator: bool = True) -> IkeSa:
        return IkeSa(config("A", ike=IKE, psk=psk), (A_ADDR, 500), (B_ADDR, 500),
                     initiator=initiator, rand=seeded(seed))

    def forge_inits(self, count: int) -> None:
        """IKE_SA_INITs from the peer's address by initiators that never see the answers."""
        before = len(self.wire.sent)
        for _ in range(count):
            self.forged += 1
            forger = self.peer(1000 + self.forged)
            forger.initiate(self.now)
            self.to_tunnel(forger, (A_ADDR, 500))
        del self.wire.sent[before:]

    def to_tunnel(self, sa: IkeSa, port500: tuple[str, int] = GENUINE[0],
                  port4500: tuple[str, int] = GENUINE[1]) -> None:
        for data, _to in sa.datagrams_to_send(self.now):
            nat_t = data.startswith(NON_ESP_MARKER)
            self.tunnel.receive_ike(data[4:] if nat_t else data, port4500 if nat_t else port500,
                                    nat_t, self.now)

    def to_peers(self, *sas: IkeSa) -> int:
        """Deliver what the tunnel sent to the peer cores it is for; the rest is lost."""
        sent, self.wire.sent = self.wire.sent, []
        for message, _to, nat_t in sent:
            data = NON_ESP_MARKER + message if nat_t else message
            for sa in sas:
                mine = message[:8] == sa.local_spi if sa.is_initiator else (
                    message[8:16] == sa.local_spi or sa.state is IkeState.INITIAL)
                if mine:
                    sa.receive_datagram(data, (B_ADDR, 4500 if nat_t else 500), self.now)
        return len(sent)

    def run(self, *sas: IkeSa, port500: tuple[str, int] = GENUINE[0],
            port4500: tuple[str, int] = GENUINE[1]) -> None:
        for _ in range(20):
            for sa in sas:
                self.to_tunnel(sa, port500, port4500)
            if not self.to_peers(*sas):
                return
        raise AssertionError("the wire never went quiet")

    def tick(self, seconds: float, *sas: IkeSa) -> None:
        self.now += seconds
        self.tunnel.handle_timer(self.now)
        for sa in sas:
            sa.handle_timer(self.now)


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield Lab()


def bring_up(lab: Lab, seed: int = 1) -> IkeSa:
    peer = lab.peer(seed)
    peer.initiate(lab.now)
    lab.run(peer)
    assert lab.tunnel.state == "up" and peer.state is IkeState.ESTABLISHED
    return peer


def test_waiting_tunnel_answers_the_peer_and_installs_its_child_sa(lab: Lab) -> None:
    assert lab.tunnel.state == "connecting" and lab.tunnel.sa is None
    peer = bring_up(lab)
    child = peer.children[0]
    status = lab.tunnel.status(lab.now)
    assert (status.spi_in, status.spi_out) == (child.spi_out.hex(), child.spi_in.hex())
    assert lab.tunnel.seal(b"\x45" + bytes(19)) is not None
    assert status.ike_half_open == 0 and status.ike_inits_admitted == 1 and not status.ike_drops


def test_forged_inits_never_touch_a_live_sa_and_soon_get_cookies(lab: Lab) -> None:
    peer = bring_up(lab)
    live, spis = lab.tunnel.sa, lab.tunnel.status(lab.now).spi_in
    lab.forge_inits(50)
    status = lab.tunnel.status(lab.now)
    assert lab.tunnel.sa is live and status.state == "up" and status.spi_in == spis
    assert status.ike_inits_admitted == 1 + c.COOKIE_THRESHOLD_IP  # one DH each
    assert status.ike_half_open == status.ike_half_open_peak == c.COOKIE_THRESHOLD_IP
    assert status.ike_drops == {"cookie-required": 50 - c.COOKIE_THRESHOLD_IP}
    assert status.ike_drop_sources == {f"{A_ADDR}:500": 50 - c.COOKIE_THRESHOLD_IP}
    peer.rekey_child(lab.now)  # the live SA still works
    lab.run(peer)
    assert lab.tunnel.status(lab.now).spi_in != spis and lab.tunnel.state == "up"


def test_the_real_peer_comes_up_in_the_middle_of_a_flood(lab: Lab) -> None:
    lab.forge_inits(20)
    peer = lab.peer(1)
    peer.initiate(lab.now)
    lab.to_tunnel(peer)  # answered with a COOKIE ...
    assert lab.to_peers(peer) == 1 and peer.state is IkeState.INIT_SENT
    lab.to_tunnel(peer)  # ... repeated with it: admitted
    assert lab.tunnel.status(lab.now).ike_half_open == c.COOKIE_THRESHOLD_IP + 1
    lab.forge_inits(20)  # more forgeries cannot evict it: they get cookies
    lab.run(peer)
    assert lab.tunnel.state == "up" and peer.state is IkeState.ESTABLISHED
    assert lab.tunnel.status(lab.now).ike_drops["cookie-required"] == 40 - c.COOKIE_THRESHOLD_IP + 1


def test_forged_inits_do_not_cancel_our_own_initiation() -> None:
    lab = Lab(initiate=True)
    ours = lab.tunnel.initiating
    assert ours is not None and len(lab.wire.sent) == 1  # our IKE_SA_INIT, not answered yet
    lab.forge_inits(5)
    assert lab.tunnel.initiating is ours and lab.tunnel.sa is None
    lab.tick(ours.config.retransmit_base)  # our retransmission still goes out
    responder = lab.peer(2, initiator=False)
    lab.run(responder)
    assert lab.tunnel.state == "up" and lab.tunnel.sa is ours
    assert lab.tunnel.initiating is None and lab.tunnel.status(lab.now).ike_half_open == 3


def test_a_new_sa_replaces_the_live_one_only_once_authenticated(lab: Lab) -> None:
    old_peer = bring_up(lab)
    old_spi = lab.tunnel.status(lab.now).spi_in
    restarted = lab.peer(2)  # the peer restarted: a new IKE SA with INITIAL_CONTACT
    restarted.initiate(lab.now)
    lab.to_tunnel(restarted)
    lab.to_peers(restarted)
    assert lab.tunnel.status(lab.now).spi_in == old_spi  # IKE_SA_INIT alone changes nothing
    lab.run(restarted, old_peer)
    assert lab.tunnel.status(lab.now).spi_in not in (None, old_spi) and lab.tunnel.state == "up"
    assert old_peer.state is IkeState.CLOSED  # our DELETE reached the old SA
    assert lab.sad.remove(int(old_spi or "0", 16)) is None  # its ESP is gone


def test_a_dead_live_sa_leaves_a_half_open_sa_to_finish() -> None:
    lab = Lab(dpd_delay=1.0, retransmit_base=0.5, retransmit_tries=1, dpd_action="clear")
    bring_up(lab)
    restarted = lab.peer(2)
    restarted.initiate(lab.now)
    lab.to_tunnel(restarted)
    lab.to_peers(restarted)
    for _ in range(8):  # DPD goes unanswered: the old peer is gone
        lab.tick(0.5)
        lab.wire.sent.clear()
    assert lab.tunnel.sa is None and "peer dead" in (lab.tunnel.last_error or "")
    assert lab.tunnel.state == "down" and len(lab.tunnel.half_open) == 1
    lab.run(restarted)  # its IKE_AUTH arrives now
    assert lab.tunnel.state == "up"


def test_initiating_tunnel_retries_with_back_off() -> None:
    lab = Lab(initiate=True)
    first = lab.tunnel.initiating
    picky = IkeSa(config("A", ike="aes256-sha256-modp2048"), (A_ADDR, 500), (B_ADDR, 500),
                  initiator=False, rand=seeded(3))
    lab.run(picky)
    assert lab.tunnel._retry_at == lab.now + 2.0
    assert "no proposal chosen" in (lab.tunnel.last_error or "")
    lab.now += 2.0
    lab.tunnel.handle_timer(lab.now)
    assert lab.tunnel.initiating not in (None, first)
    picky = IkeSa(config("A", ike="aes256-sha256-modp2048"), (A_ADDR, 500), (B_ADDR, 500),
                  initiator=False, rand=seeded(4))
    lab.run(picky)
    assert lab.tunnel._retry_at == lab.now + 5.0  # the second delay is longer


def test_authentication_failures_are_named_counted_and_throttled_per_source(
    lab: Lab, caplog: pytest.LogCaptureFixture,
) -> None:
    guesser_init, guesser_auth = (A_ADDR, 40000), (A_ADDR, 40001)
    caplog.set_level(logging.WARNING)
    for attempt in range(c.AUTH_FAILURE_BURST):
        guesser = lab.peer(50 + attempt, psk=b"a wrong guess")
        guesser.initiate(lab.now)
        lab.run(guesser, port500=guesser_init, port4500=guesser_auth)
        assert guesser.state is IkeState.CLOSED
    assert f"authentication failed from {A_ADDR}:40001" in caplog.text
    assert f"from {A_ADDR}:40001" in (lab.tunnel.last_error or "")
    status = lab.tunnel.status(lab.now)
    assert status.ike_drops == {"auth-failed": c.AUTH_FAILURE_BURST}
    guesser = lab.peer(60, psk=b"a wrong guess")
    guesser.initiate(lab.now)
    lab.to_tunnel(guesser, guesser_init)
    assert not lab.wire.sent and lab.tunnel.status(lab.now).ike_drops["auth-throttled"] == 1
    bring_up(lab, seed=61)  # the genuine peer (another port) is not locked out
    assert lab.tunnel.status(lab.now).ike_half_open == 0


def test_garbage_and_unknown_spis_are_counted_by_reason_and_source(lab: Lab) -> None:
    peer = bring_up(lab)
    tunnel = lab.tunnel
    tunnel.receive_ike(b"\x01\x02", (A_ADDR, 7000), False, lab.now)
    tunnel.receive_ike(bytes(8) + bytes(20), (A_ADDR, 7000), True, lab.now)
    sealed = peer._ctx.encode(37, 5, False, [])  # authentic keys, forged SPI
    tunnel.receive_ike(b"\x99" * 16 + sealed[16:], (A_ADDR, 4500), True, lab.now)
    tampered = bytearray(peer._ctx.encode(37, peer._ctx.next_request_id, False, []))
    tampered[-1] ^= 1
    tunnel.receive_ike(bytes(tampered), (A_ADDR, 4500), True, lab.now)
    status = tunnel.status(lab.now)
    assert status.ike_drops == {"malformed": 2, "unknown-spi": 1, "bad-integrity": 1}
    assert status.ike_drop_sources == {f"{A_ADDR}:7000": 2, f"{A_ADDR}:4500": 2}
    assert tunnel.state == "up"
