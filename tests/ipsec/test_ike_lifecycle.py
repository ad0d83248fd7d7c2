"""Pair tests after IKE_AUTH: CHILD and IKE rekey (both roles), DPD, DELETE, loss, garbage."""

from __future__ import annotations

import pytest

from sslvpn.ipsec.ike import events as ev
from sslvpn.ipsec.ike.constants import NON_ESP_MARKER
from sslvpn.ipsec.ike.sa import IkeState, LocalProtocolError

from .ike_pair import Pair, config, establish, make_pair


def _up(**kw: object) -> Pair:
    pair = establish(make_pair(config("A", **kw), config("B", **kw)))  # type: ignore[arg-type]
    assert pair.a.state is IkeState.ESTABLISHED and pair.b.state is IkeState.ESTABLISHED
    return pair


def _latest(pair: Pair, name: str) -> ev.ChildSaEstablished:
    return pair.of(name, ev.ChildSaEstablished)[-1]


def _assert_children_agree(pair: Pair) -> None:
    a, b = _latest(pair, "a"), _latest(pair, "b")
    assert (a.spi_in, a.spi_out) == (b.spi_out, b.spi_in)
    assert a.keys_out == b.keys_in and a.keys_in == b.keys_out


@pytest.mark.parametrize("who", ["a", "b"])
@pytest.mark.parametrize("esp", ["aes256gcm16", "aes256-sha256", "aes256gcm16-curve25519"])
def test_child_rekey_replaces_the_sa_without_loss(who: str, esp: str) -> None:
    pair = _up(esp=esp)
    first_a = _latest(pair, "a")
    sa = pair.a if who == "a" else pair.b
    sa.rekey_child(pair.now)
    # the new SA is announced before the old one is deleted, on both sides; the rekey's
    # responder installs it inbound only at first and sends on it once the old one is gone
    pair.run()
    for name in "ab":
        kinds = [type(e) for e in pair.events[name]]
        established = [e for e in pair.events[name] if isinstance(e, ev.ChildSaEstablished)]
        responder = name != who
        assert [e.outbound for e in established] == [True, False, True] if responder else [
            True, True]
        assert kinds.index(ev.ChildSaDeleted) > len(kinds) - 1 - kinds[::-1].index(
            ev.ChildSaEstablished
        )
        (deleted,) = pair.of(name, ev.ChildSaDeleted)
        assert deleted.reason == "rekeyed"
        assert established[-1].rekeyed_from == established[0].spi_in == deleted.spi_in
        assert established[1].spi_in == established[-1].spi_in
    _assert_children_agree(pair)
    assert _latest(pair, "a").keys_out != first_a.keys_out
    assert len(pair.a.children) == len(pair.b.children) == 1


@pytest.mark.parametrize("who", ["a", "b"])
def test_ike_rekey_moves_children_and_flips_roles(who: str) -> None:
    pair = _up(ike="aes256gcm16-prfsha256-curve25519")
    old_spis = (pair.a.local_spi, pair.b.local_spi)
    (pair.a if who == "a" else pair.b).rekey_ike(pair.now)
    pair.run()
    for name in "ab":
        (rekeyed,) = pair.of(name, ev.IkeSaRekeyed)
        assert rekeyed.old_local_spi in old_spis
        assert not pair.of(name, ev.ChildSaDeleted) and not pair.of(name, ev.MessageDropped)
    assert pair.a.local_spi not in old_spis and pair.b.local_spi not in old_spis
    assert pair.a.local_spis == {pair.a.local_spi}  # old IKE SA deleted
    assert len(pair.a.children) == 1
    # the new IKE SA works: a CHILD rekey and a DPD go through it
    pair.b.rekey_child(pair.now)
    pair.run()
    _assert_children_agree(pair)
    pair.advance(pair.now + 31)
    assert pair.a.state is IkeState.ESTABLISHED and not pair.of("a", ev.PeerDead)


def test_timers_rekey_child_and_ike_before_lifetimes_end() -> None:
    pair = _up(child_rekey_time=100.0, child_life_time=120.0, child_rekey_jitter=10.0,
               ike_rekey_time=300.0, ike_rekey_jitter=30.0, dpd_delay=0.0)
    start = pair.now
    pair.advance(start + 1000)
    for name in "ab":
        rekeys = [e for e in pair.of(name, ev.ChildSaEstablished) if e.rekeyed_from]
        assert len(rekeys) >= 8  # roughly every 90-100 s
        assert len(pair.of(name, ev.IkeSaRekeyed)) >= 3
        deleted = pair.of(name, ev.ChildSaDeleted)
        assert deleted and all(d.reason == "rekeyed" for d in deleted)
    _assert_children_agree(pair)
    assert pair.a.state is IkeState.ESTABLISHED
    assert len(pair.a.children) == len(pair.b.children) == 1


def test_pfs_rekey_mismatch_keeps_the_old_child() -> None:
    pair = establish(make_pair(config("A", esp="aes256gcm16-modp2048"),
                               config("B", esp="aes256gcm16")))
    assert len(pair.a.children) == 1  # IKE_AUTH carries no KE, so this works
    pair.a.rekey_child(pair.now)
    pair.run()
    assert pair.of("a", ev.NoProposalChosen) and pair.of("b", ev.NoProposalChosen)
    assert len(pair.a.children) == 1 and not pair.of("a", ev.ChildSaDeleted)


def test_dpd_probes_when_idle_and_detects_a_dead_peer() -> None:
    pair = _up(dpd_delay=10.0, retransmit_base=1.0, retransmit_tries=3)
    sent_before = pair.delivered
    pair.advance(pair.now + 25)
    assert pair.delivered > sent_before  # DPD request + response
    assert pair.a.state is IkeState.ESTABLISHED
    pair.drop = lambda direction, data: True  # the peer vanishes
    pair.advance(pair.now + 60)
    assert pair.of("a", ev.PeerDead) and pair.a.state is IkeState.CLOSED
    assert pair.of("a", ev.ChildSaDeleted)


def test_esp_traffic_postpones_dpd() -> None:
    pair = _up(dpd_delay=10.0)
    start = pair.now
    for step in range(1, 6):
        pair.now = start + 5 * step
        pair.a.note_inbound_traffic(pair.now)
        pair.b.note_inbound_traffic(pair.now)
        pair.a.handle_timer(pair.now)
        pair.b.handle_timer(pair.now)
        assert not pair.a.datagrams_to_send(pair.now)
        assert not pair.b.datagrams_to_send(pair.now)


@pytest.mark.parametrize("who", ["a", "b"])
def test_delete_closes_both_sides(who: str) -> None:
    pair = _up()
    (pair.a if who == "a" else pair.b).delete(pair.now)
    pair.run()
    for name in "ab":
        assert pair.of(name, ev.IkeSaClosed) and pair.of(name, ev.ChildSaDeleted)
    assert pair.a.state is IkeState.CLOSED and pair.b.state is IkeState.CLOSED


def test_child_expiry_without_rekey_deletes_it() -> None:
    pair = _up(child_rekey_time=1e9, child_life_time=50.0, dpd_delay=0.0)
    pair.advance(pair.now + 60)
    assert pair.of("a", ev.ChildSaDeleted) and pair.of("b", ev.ChildSaDeleted)
    assert not pair.a.children and pair.a.state is IkeState.ESTABLISHED


def test_retransmission_recovers_lost_requests_and_responses() -> None:
    pair = make_pair(config("A", retransmit_base=2.0), config("B", retransmit_base=2.0))
    lost: list[str] = []

    def lose_first_of_each(direction: str, data: bytes) -> bool:
        key = f"{direction}:{len(pair.events['a'])}:{data.startswith(NON_ESP_MARKER)}"
        if key in lost:
            return False
        lost.append(key)
        return True

    pair.drop = lose_first_of_each
    establish(pair)
    pair.advance(pair.now + 60)
    assert pair.a.state is IkeState.ESTABLISHED and pair.b.state is IkeState.ESTABLISHED
    assert len(pair.of("b", ev.ChildSaEstablished)) == 1  # the cached response was replayed
    assert len(lost) >= 3


def test_initiator_gives_up_when_nobody_answers() -> None:
    pair = make_pair(config("A", retransmit_base=1.0, retransmit_tries=2))
    pair.drop = lambda direction, data: True
    establish(pair)
    pair.advance(pair.now + 100)
    (closed,) = pair.of("a", ev.IkeSaClosed)
    assert "IKE_SA_INIT" in closed.reason


def test_half_open_responder_times_out() -> None:
    pair = make_pair(config("A"), config("B", half_open_timeout=30.0))
    pair.drop = lambda direction, data: direction == "a" and data.startswith(NON_ESP_MARKER)
    establish(pair)
    assert pair.b.half_open
    pair.advance(pair.now + 31)
    assert pair.b.state is IkeState.CLOSED and "half-open" in (pair.b.close_reason or "")


def test_garbage_replays_and_forgeries_are_counted_drops() -> None:
    pair = _up()
    from_b: list[bytes] = []

    def record(direction: str, data: bytes) -> bool:
        if direction == "b":
            from_b.append(data)
        return False

    pair.drop = record
    pair.b.rekey_child(pair.now)  # B: CREATE_CHILD_SA request (id 0), then DELETE (id 1)
    pair.run()
    last_request = from_b[-1]
    before = len(pair.a.children)
    for junk in (b"", b"\x00\x00\x00\x00", b"\xff", b"x" * 40, NON_ESP_MARKER + b"y" * 60):
        pair.a.receive_datagram(junk, ("198.18.0.2", 4500), pair.now)
    forged = bytearray(last_request)
    forged[-1] ^= 1
    pair.a.receive_datagram(bytes(forged), ("198.18.0.2", 4500), pair.now)
    pair.a.receive_datagram(from_b[0], ("198.18.0.2", 4500), pair.now)  # old request
    pair.a.receive_datagram(last_request, ("198.18.0.2", 4500), pair.now)  # retransmission
    replies = pair.a.datagrams_to_send(pair.now)
    pair.collect()
    assert pair.a.dropped["malformed message"] >= 3
    assert pair.a.dropped["integrity check failed"] == 1
    assert pair.a.dropped["request outside the message-ID window"] == 1
    assert len(replies) == 1  # the cached response, not a second processing
    assert len(pair.a.children) == before
    assert len(pair.of("a", ev.ChildSaEstablished)) == 3  # first, new (held), new sending
    assert len(pair.of("a", ev.MessageDropped)) == sum(pair.a.dropped.values())


def test_commands_need_the_right_state() -> None:
    pair = make_pair()
    with pytest.raises(LocalProtocolError):
        pair.b.initiate(pair.now)
    with pytest.raises(LocalProtocolError):
        pair.a.rekey_child(pair.now)
    pair.a.initiate(pair.now)
    with pytest.raises(LocalProtocolError):
        pair.a.initiate(pair.now)


@pytest.mark.parametrize("error", ["NO_PROPOSAL_CHOSEN", "INVALID_SYNTAX", "garbage"])
def test_a_refused_ike_rekey_keeps_the_sa_and_tries_again_later(error: str) -> None:
    """The peer refuses our IKE rekey (or answers nonsense): the working IKE SA and its
    CHILD_SA stay, nothing is torn down, and the rekey is tried again 30-45 s later."""
    from dataclasses import replace

    from sslvpn.ipsec.ike.constants import ExchangeType, NotifyType
    from sslvpn.ipsec.ike.messages import NotifyPayload

    pair = _up(dpd_delay=0.0)
    b_config = pair.b.config
    if error == "NO_PROPOSAL_CHOSEN":  # B was reconfigured: our rekey proposal no longer fits
        pair.b.config = replace(b_config, ike_proposals=config(
            "B", ike="aes128gcm16-prfsha256-ecp256").ike_proposals)
    else:  # B answers with an error, or with an SA-less answer, and keeps its SA
        from sslvpn.ipsec.ike.messages import NoncePayload

        answer = ([NotifyPayload(NotifyType.INVALID_SYNTAX)] if error != "garbage"
                  else [NoncePayload(bytes(32))])

        def spoil(ctx, message_id, payloads, sa, now):  # type: ignore[no-untyped-def]
            pair.b._respond(ctx, ExchangeType.CREATE_CHILD_SA, message_id, answer)  # noqa: SLF001

        pair.b._answer_rekey_ike = spoil  # type: ignore[method-assign]  # noqa: SLF001
    pair.a.rekey_ike(pair.now)
    pair.run()
    (failed,) = pair.of("a", ev.IkeRekeyFailed)
    assert error.split("_")[0].lower() in failed.reason.lower() or error == "garbage"
    assert pair.a.state is IkeState.ESTABLISHED and pair.b.state is IkeState.ESTABLISHED
    assert not pair.of("a", ev.IkeSaRekeyed) and not pair.of("a", ev.IkeSaClosed)
    assert not pair.of("a", ev.ChildSaDeleted) and len(pair.a.children) == 1
    assert pair.now + 30 <= pair.a.ike_rekey_at <= pair.now + 45
    pair.b.config = b_config
    if error != "NO_PROPOSAL_CHOSEN":
        del pair.b._answer_rekey_ike  # noqa: SLF001
    pair.advance(pair.a.ike_rekey_at + 1)
    assert pair.of("a", ev.IkeSaRekeyed) and pair.of("b", ev.IkeSaRekeyed)
    assert pair.a.state is IkeState.ESTABLISHED and len(pair.b.children) == 1


def test_initiator_repeats_init_with_the_cookie() -> None:
    from sslvpn.ipsec.ike.messages import IkeHeader, NotifyPayload, encode_message, pull_message

    pair = make_pair()
    pair.a.initiate(pair.now)
    ((first, _),) = pair.a.datagrams_to_send(pair.now)
    request = pull_message(first)
    cookie = IkeHeader(request.header.spi_i, bytes(8), 0, 34, 0x20, 0)
    pair.a.receive_datagram(encode_message(cookie, [NotifyPayload(16390, b"c" * 16)]),
                            ("198.18.0.2", 500), pair.now)
    ((second, _),) = pair.a.datagrams_to_send(pair.now)
    again = pull_message(second)
    assert again.payloads[0] == NotifyPayload(16390, b"c" * 16)
    assert again.payloads[1:] == request.payloads  # identical otherwise (same KE and Ni)
    pair.b.receive_datagram(second, ("198.18.0.1", 500), pair.now)
    pair.run()
    assert pair.a.state is IkeState.ESTABLISHED and pair.b.state is IkeState.ESTABLISHED


def test_closed_responder_repeats_authentication_failed_to_a_retransmission() -> None:
    pair = make_pair(config("A", retransmit_base=1.0), config("B", psk=b"other"))
    first = {"lost": False}

    def lose_first_auth_answer(direction: str, data: bytes) -> bool:
        if direction == "b" and data.startswith(NON_ESP_MARKER) and not first["lost"]:
            first["lost"] = True
            return True
        return False

    pair.drop = lose_first_auth_answer
    establish(pair)
    assert pair.b.state is IkeState.CLOSED and pair.a.state is IkeState.AUTH_SENT
    pair.advance(pair.now + 5)
    assert pair.of("a", ev.AuthenticationFailed) and pair.a.state is IkeState.CLOSED


def _schedule(**timers: float) -> tuple[list[float], float]:
    pair = make_pair(config("A", **timers))
    start = pair.now
    pair.a.initiate(start)
    sends = [0.0]
    pair.a.datagrams_to_send(start)
    gave_up = 0.0
    while pair.a.state is not IkeState.CLOSED:
        due = pair.a.get_timer()
        assert due is not None
        pair.a.handle_timer(due)
        if pair.a.datagrams_to_send(due):
            sends.append(round(due - start, 2))
        gave_up = due - start
    return sends, round(gave_up, 1)


def test_retransmission_schedule_is_strongswans_capped_by_the_limit() -> None:
    # strongSwan's retransmit_timeout 4 s, base 1.8, 5 tries, without a limit ...
    assert _schedule(retransmit_limit=0.0) == ([0.0, 4.0, 11.2, 24.16, 47.49, 89.48], 165.1)
    # ... and ours by default: no wait longer than 20 s, so a peer back is heard soon
    assert _schedule() == ([0.0, 4.0, 11.2, 24.16, 44.16, 64.16], 84.2)


def test_dpd_timeout_declares_the_peer_dead_before_the_retransmissions_end() -> None:
    pair = _up(dpd_delay=10.0, dpd_timeout=30.0)
    pair.collect()
    quiet_since = pair.now
    pair.drop = lambda direction, data: True  # kill -9 of the peer
    while pair.a.state is not IkeState.CLOSED and pair.now < quiet_since + 200:
        pair.advance(pair.now + 0.5)
    assert pair.of("a", ev.PeerDead)
    assert pair.a.close_reason and "peer dead" in pair.a.close_reason
    # the probe left at +10 s and was given up 30 s later (retransmissions alone: 84 s)
    assert quiet_since + 40 <= pair.now <= quiet_since + 40.5


def test_an_unanswered_init_says_so() -> None:
    pair = make_pair(config("A", retransmit_base=1.0, retransmit_tries=1))
    pair.drop = lambda direction, data: True
    establish(pair)
    pair.advance(pair.now + 10)
    (closed,) = pair.of("a", ev.IkeSaClosed)
    assert closed.unanswered
