"""Additional key exchanges with ML-KEM-768 (RFC 9370 over RFC 9242's IKE_INTERMEDIATE).

Our initiator against our responder with and without the additional exchange, peers that do
not offer it, the key schedule and AUTH depending on it, and robustness of the new exchange.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sslvpn.ipsec.ike import events as ev
from sslvpn.ipsec.ike import handshake
from sslvpn.ipsec.ike import proposals as pr
from sslvpn.ipsec.ike.constants import (
    NON_ESP_MARKER,
    DhGroup,
    ExchangeType,
    NotifyType,
    ProtocolId,
    TransformType,
)
from sslvpn.ipsec.ike.crypto import CryptoError, KemExchange, kem_encapsulate
from sslvpn.ipsec.ike.messages import (
    KePayload,
    NotifyPayload,
    encode_message,
    int_auth_octets,
    peek_header,
    pull_message,
)
from sslvpn.ipsec.ike.sa import IkeSa, IkeState

from .ike_pair import Pair, config, make_pair, seeded

CLASSIC = "aes256gcm16-prfsha256-ecp256"
PQ = f"{CLASSIC}-ke1_mlkem768"
BOTH = f"{PQ},{CLASSIC}"  # what a tunnel to strongSwan 6 and older peers alike offers
IKE = ProtocolId.IKE


def _traced(pair: Pair) -> list[tuple[str, int, int, bool]]:
    """Record (sender, exchange, message ID, response) of every datagram on the wire."""
    seen: list[tuple[str, int, int, bool]] = []

    def record(direction: str, data: bytes) -> bool:
        header = peek_header(data[4:] if data.startswith(NON_ESP_MARKER) else data)
        seen.append((direction, header.exchange, header.message_id, header.is_response))
        return False

    pair.drop = record
    return seen


def _establish(a_ike: str, b_ike: str) -> tuple[Pair, list[tuple[str, int, int, bool]]]:
    pair = make_pair(config("A", ike=a_ike), config("B", ike=b_ike))
    seen = _traced(pair)
    pair.a.initiate(pair.now)
    pair.run()
    return pair, seen


# -- notation and selection ------------------------------------------------------------------


def test_strongswan_notation_for_additional_key_exchanges() -> None:
    spec = pr.parse_proposal(PQ, IKE)
    assert spec.dhs == (DhGroup.ECP_256,) and spec.addkes == ((DhGroup.ML_KEM_768,),)
    transforms = spec.to_proposal(1, b"").transforms
    assert (TransformType.ADDKE1, DhGroup.ML_KEM_768) in [(t.type, t.id) for t in transforms]
    optional = pr.parse_proposal(f"{CLASSIC}-ke3_mlkem768-ke3_none", IKE)
    assert optional.addkes == ((), (), (DhGroup.ML_KEM_768, DhGroup.NONE))


@pytest.mark.parametrize("text", [
    f"{CLASSIC}-ke8_mlkem768",  # RFC 9370 has seven additional exchanges
    f"{CLASSIC}-ke1_mlkem512",  # not implemented
    f"{CLASSIC}-ke1_mlkem768-ke1_mlkem768",
    "aes256gcm16-prfsha256-ke1_mlkem768",  # no classical group first
])
def test_bad_additional_key_exchange_notation_is_refused(text: str) -> None:
    with pytest.raises(pr.ProposalError):
        pr.parse_proposals(text, IKE)


def test_esp_proposals_cannot_name_additional_key_exchanges() -> None:
    with pytest.raises(pr.ProposalError):
        pr.parse_proposals("aes256gcm16-ke1_mlkem768", ProtocolId.ESP)


def _select(ours: str, theirs: str) -> pr.Suite | None:
    offered = pr.build_proposals(pr.parse_proposals(theirs, IKE), b"")
    chosen = pr.select(pr.parse_proposals(ours, IKE), offered)
    return chosen[1] if chosen else None


def test_selection_of_additional_key_exchanges() -> None:
    both = _select(BOTH, BOTH)
    assert both is not None and both.additional_kes == (DhGroup.ML_KEM_768,)
    assert both.name == PQ
    # a classical responder takes the initiator's second proposal
    classic = _select(CLASSIC, BOTH)
    assert classic is not None and classic.addkes == () and classic.name == CLASSIC
    # a responder that requires ML-KEM refuses a classical initiator
    assert _select(PQ, CLASSIC) is None
    # a peer's optional round (mlkem768 or none) is answered NONE when we do not run it
    optional = _select(CLASSIC, f"{CLASSIC}-ke1_mlkem768-ke1_none")
    assert optional is not None and optional.additional_kes == ()
    assert optional.addkes == ((TransformType.ADDKE1, DhGroup.NONE),)
    # ... and a mandatory one we do not configure is no match
    assert _select(CLASSIC, PQ) is None


# -- ML-KEM and the IntAuth octets --------------------------------------------------------


def test_ml_kem_768_agrees_and_refuses_wrong_sizes() -> None:
    kem = KemExchange(DhGroup.ML_KEM_768, seeded(7))
    assert len(kem.public) == 1184
    ciphertext, shared = kem_encapsulate(DhGroup.ML_KEM_768, kem.public)
    assert len(ciphertext) == 1088 and kem.shared_secret(ciphertext) == shared
    with pytest.raises(CryptoError):
        kem.shared_secret(ciphertext[:-1])
    with pytest.raises(CryptoError):
        kem_encapsulate(DhGroup.ML_KEM_768, kem.public + b"\x00")
    with pytest.raises(CryptoError):  # FIPS 203 modulus check: coefficients >= q
        kem_encapsulate(DhGroup.ML_KEM_768, b"\xff" * 1184)


def test_int_auth_octets_count_only_the_inner_payloads() -> None:
    header = bytes(range(24)) + (1000).to_bytes(4, "big")
    sk_header = bytes([34, 0]) + (972).to_bytes(2, "big")
    inner = b"inner payloads"
    octets = int_auth_octets(header + sk_header + b"iv+ciphertext+icv", inner)
    assert octets[:24] == header[:24]
    assert int.from_bytes(octets[24:28], "big") == 28 + 4 + len(inner)
    assert octets[28:30] == bytes([34, 0])
    assert int.from_bytes(octets[30:32], "big") == 4 + len(inner)
    assert octets[32:] == inner


# -- our initiator against our responder ----------------------------------------------------


def test_ml_kem_runs_in_ike_intermediate_and_keys_agree() -> None:
    pair, seen = _establish(BOTH, BOTH)
    assert pair.a.state is IkeState.ESTABLISHED and pair.b.state is IkeState.ESTABLISHED
    assert [(e, mid) for d, e, mid, _ in seen if d == "a"] == [
        (ExchangeType.IKE_SA_INIT, 0), (ExchangeType.IKE_INTERMEDIATE, 1),
        (ExchangeType.IKE_AUTH, 2),
    ]
    (ike_a,) = pair.of("a", ev.IkeSaEstablished)
    (ike_b,) = pair.of("b", ev.IkeSaEstablished)
    assert ike_a.suite == ike_b.suite and ike_a.suite.name == PQ
    (child_a,) = pair.of("a", ev.ChildSaEstablished)
    (child_b,) = pair.of("b", ev.ChildSaEstablished)
    assert child_a.keys_out == child_b.keys_in and child_a.keys_in == child_b.keys_out
    assert "ke1_mlkem768" in pair.a.status and "ke1_mlkem768" in pair.b.status
    assert not pair.of("a", ev.MessageDropped) and not pair.of("b", ev.MessageDropped)


def test_the_ml_kem_secret_feeds_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A responder that ends up with another ML-KEM secret cannot read IKE_AUTH."""
    real = handshake.kem_encapsulate

    def other_secret(method: DhGroup, public: bytes) -> tuple[bytes, bytes]:
        ciphertext, shared = real(method, public)
        return ciphertext, bytes(len(shared))

    monkeypatch.setattr(handshake, "kem_encapsulate", other_secret)
    pair, _ = _establish(BOTH, BOTH)
    assert pair.b.state is not IkeState.ESTABLISHED and pair.a.state is not IkeState.ESTABLISHED
    assert [d.kind for d in pair.of("b", ev.MessageDropped)] == ["bad-integrity"]


def test_auth_covers_the_intermediate_exchange(monkeypatch: pytest.MonkeyPatch) -> None:
    """AUTH signs IntAuth_i | IntAuth_r | MID: a differing IntAuth fails authentication."""
    pair = make_pair(config("A", ike=BOTH), config("B", ike=BOTH))
    real = IkeSa._int_auth  # noqa: SLF001

    def skewed(sa: IkeSa, *args: object) -> bytes:
        value = real(sa, *args)  # type: ignore[arg-type]
        return value[:-1] + bytes([value[-1] ^ 1]) if sa is pair.b else value

    monkeypatch.setattr(IkeSa, "_int_auth", skewed)
    pair.a.initiate(pair.now)
    pair.run()
    assert pair.of("b", ev.AuthenticationFailed) and pair.of("a", ev.AuthenticationFailed)


@pytest.mark.parametrize(("a_ike", "b_ike"), [
    (BOTH, CLASSIC),  # a responder without ML-KEM (strongSwan 5.9 does this)
    (CLASSIC, BOTH),  # an initiator without it
])
def test_a_peer_without_ml_kem_still_gets_the_classical_tunnel(a_ike: str, b_ike: str) -> None:
    pair, seen = _establish(a_ike, b_ike)
    assert pair.a.state is IkeState.ESTABLISHED and pair.b.state is IkeState.ESTABLISHED
    assert ExchangeType.IKE_INTERMEDIATE not in [e for _, e, _, _ in seen]
    assert [e for _, e, _, r in seen if not r] == [34, 35]  # INIT then AUTH (message 1)
    (ike_a,) = pair.of("a", ev.IkeSaEstablished)
    assert ike_a.suite.name == CLASSIC


def test_ml_kem_required_against_a_classical_initiator_is_no_proposal() -> None:
    pair, _ = _establish(CLASSIC, PQ)
    assert pair.of("a", ev.NoProposalChosen) and pair.a.state is IkeState.CLOSED


def test_ml_kem_without_ike_intermediate_support_is_no_proposal() -> None:
    """RFC 9370 runs on IKE_INTERMEDIATE: an initiator that does not announce it gets none."""
    pair = make_pair(config("A", ike=BOTH), config("B", ike=PQ))
    pair.a.initiate(pair.now)
    ((data, _),) = pair.a.datagrams_to_send(pair.now)
    message = pull_message(data)
    kept = [p for p in message.payloads if not (isinstance(p, NotifyPayload) and p.notify_type
                                                == NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED)]
    assert len(kept) == len(message.payloads) - 1
    pair.b.receive_datagram(encode_message(message.header, kept), ("198.18.0.1", 500), pair.now)
    pair.collect()
    assert pair.of("b", ev.NoProposalChosen) and pair.b.state is IkeState.CLOSED


def test_classical_tunnels_do_not_announce_ike_intermediate() -> None:
    """Existing classical tunnels send exactly what they sent before."""
    for ike, announced in ((CLASSIC, False), (BOTH, True)):
        sa = IkeSa(config("A", ike=ike), ("198.18.0.1", 500), ("198.18.0.2", 500),
                   initiator=True, rand=seeded(3))
        sa.initiate(0.0)
        ((data, _),) = sa.datagrams_to_send(0.0)
        types = [p.notify_type for p in pull_message(data).payloads
                 if isinstance(p, NotifyPayload)]
        assert (NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED in types) is announced


def test_a_lost_intermediate_response_is_retransmitted() -> None:
    pair = make_pair(config("A", ike=BOTH), config("B", ike=BOTH))
    lost: list[bytes] = []

    def lose_first_intermediate_answer(direction: str, data: bytes) -> bool:
        header = peek_header(data[4:] if data.startswith(NON_ESP_MARKER) else data)
        if direction == "b" and header.exchange == ExchangeType.IKE_INTERMEDIATE and not lost:
            lost.append(data)
            return True
        return False

    pair.drop = lose_first_intermediate_answer
    pair.a.initiate(pair.now)
    pair.run()
    assert lost and pair.a.state is IkeState.INIT_SENT
    pair.advance(pair.now + 10)
    assert pair.a.state is IkeState.ESTABLISHED and pair.b.state is IkeState.ESTABLISHED


def _rekey(pair: Pair, who: str) -> list[tuple[str, int, int, bool]]:
    seen = _traced(pair)
    (pair.a if who == "a" else pair.b).rekey_ike(pair.now)
    pair.run()
    return seen


def _works(pair: Pair) -> None:
    """Both sides are on the same single IKE SA, and it carries a CHILD rekey and DPD."""
    assert pair.a.local_spis == {pair.a.local_spi} and pair.b.local_spis == {pair.b.local_spi}
    assert {pair.a.local_spi, pair.b.local_spi} == {pair.a._ctx.spi_i, pair.a._ctx.spi_r}  # noqa: SLF001
    before = {e.spi_in for e in pair.of("a", ev.ChildSaEstablished)}
    pair.b.rekey_child(pair.now)
    pair.run()
    a, b = pair.of("a", ev.ChildSaEstablished)[-1], pair.of("b", ev.ChildSaEstablished)[-1]
    assert a.spi_in not in before and a.outbound and b.outbound
    assert a.keys_out == b.keys_in and a.keys_in == b.keys_out
    pair.advance(pair.now + 31)
    assert pair.a.state is IkeState.ESTABLISHED and pair.b.state is IkeState.ESTABLISHED


@pytest.mark.parametrize("who", ["a", "b"])
@pytest.mark.parametrize("ike", [PQ, BOTH], ids=["ml-kem-only", "ml-kem-or-classical"])
def test_ike_rekeys_run_ml_kem_in_ike_followup_ke(who: str, ike: str) -> None:
    """RFC 9370 §2.2.4 either way: CREATE_CHILD_SA settles the suite with ML-KEM and links
    to one IKE_FOLLOWUP_KE on the old SA; the new SA is used only after it."""
    pair, _ = _establish(ike, ike)
    seen = _rekey(pair, who)
    # one entry per message: the IKE_FOLLOWUP_KE with ML-KEM's key goes as 2 fragments
    requests = list(dict.fromkeys((e, mid) for d, e, mid, resp in seen if d == who and not resp))
    assert [e for e, _ in requests] == [ExchangeType.CREATE_CHILD_SA,
                                        ExchangeType.IKE_FOLLOWUP_KE, ExchangeType.INFORMATIONAL]
    for name in "ab":
        (rekeyed,) = pair.of(name, ev.IkeSaRekeyed)
        assert rekeyed.suite.name == PQ
        assert not pair.of(name, ev.MessageDropped) and not pair.of(name, ev.ChildSaDeleted)
    _works(pair)


def test_the_followup_ml_kem_secret_feeds_the_new_ike_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A responder whose IKE_FOLLOWUP_KE secret differs derives other keys: the new SA
    cannot be read (its first message, the old SA's DELETE, is still on the old SA; the
    CHILD rekey after it fails)."""
    from sslvpn.ipsec.ike import ike_rekey

    pair, _ = _establish(PQ, PQ)
    real = ike_rekey.kem_encapsulate

    def other_secret(method: DhGroup, public: bytes) -> tuple[bytes, bytes]:
        ciphertext, shared = real(method, public)
        return ciphertext, bytes(len(shared))

    monkeypatch.setattr(ike_rekey, "kem_encapsulate", other_secret)
    pair.a.rekey_ike(pair.now)
    pair.run()
    pair.b.rekey_child(pair.now)
    pair.run()
    assert [d.kind for d in pair.of("a", ev.MessageDropped)] == ["bad-integrity"]


def test_a_followup_with_a_wrong_link_is_refused_and_the_sa_stays() -> None:
    """The responder answers STATE_NOT_FOUND to an IKE_FOLLOWUP_KE whose link it does not
    know; the requester keeps its working SA and tries again later."""
    pair, _ = _establish(PQ, PQ)
    pair.a.rekey_ike(pair.now)
    for data, _ in pair.a.datagrams_to_send(pair.now):
        pair.b.receive_datagram(data, ("198.18.0.1", 4500), pair.now)
    passive = pair.b._passive  # noqa: SLF001
    assert passive is not None and len(passive.link) == 8
    passive.link = bytes(8)  # B lost track of the link it handed out
    pair.run()
    (failed,) = pair.of("a", ev.IkeRekeyFailed)
    assert "STATE_NOT_FOUND" in failed.reason
    for name in "ab":
        assert not pair.of(name, ev.IkeSaRekeyed) and not pair.of(name, ev.IkeSaClosed)
    assert pair.now + 30 <= pair.a.ike_rekey_at <= pair.now + 45
    pair.advance(pair.a.ike_rekey_at + 1)  # the retry goes through
    assert pair.of("a", ev.IkeSaRekeyed) and pair.of("b", ev.IkeSaRekeyed)
    _works(pair)


def test_simultaneous_ml_kem_ike_rekeys_leave_one_sa() -> None:
    outcomes = set()
    for seed in range(1, 9):
        pair = make_pair(config("A", ike=PQ, dpd_delay=0.0), config("B", ike=PQ, dpd_delay=0.0),
                         seed=seed)
        pair.a.initiate(pair.now)
        pair.run()
        pair.a.rekey_ike(pair.now)
        pair.b.rekey_ike(pair.now)
        pair.run()
        pair.advance(pair.now + 60)
        assert pair.a.local_spis == {pair.a.local_spi}
        assert pair.b.local_spis == {pair.b.local_spi}
        assert pair.a._ctx.spi_i == pair.b._ctx.spi_i  # noqa: SLF001
        assert pair.a._ctx.keys.sk_d == pair.b._ctx.keys.sk_d  # type: ignore[union-attr]  # noqa: SLF001
        outcomes.add(pair.a._ctx.initiator)  # noqa: SLF001
        assert not pair.of("a", ev.ChildSaDeleted) and not pair.of("b", ev.ChildSaDeleted)
        _works(pair)
    assert outcomes == {True, False}


# -- robustness ----------------------------------------------------------------------------


def _at_intermediate() -> tuple[Pair, bytes]:
    """A pair whose initiator has just sent IKE_INTERMEDIATE (returned, not delivered)."""
    pair = make_pair(config("A", ike=BOTH), config("B", ike=BOTH))
    pair.a.initiate(pair.now)
    for data, _ in pair.a.datagrams_to_send(pair.now):
        pair.b.receive_datagram(data, ("198.18.0.1", 500), pair.now)
    for data, _ in pair.b.datagrams_to_send(pair.now):
        pair.a.receive_datagram(data, ("198.18.0.2", 500), pair.now)
    ((intermediate, _),) = pair.a.datagrams_to_send(pair.now)
    assert peek_header(intermediate[4:]).exchange == ExchangeType.IKE_INTERMEDIATE
    return pair, intermediate


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2000), st.integers(1, 255), st.integers(0, 200))
def test_malformed_intermediate_is_dropped_and_the_handshake_goes_on(
    pos: int, xor: int, cut: int
) -> None:
    pair, intermediate = _at_intermediate()
    bad = bytearray(intermediate)
    bad[4 + pos % (len(bad) - 4)] ^= xor
    for forged in (bytes(bad), intermediate[: len(intermediate) - 1 - cut]):
        pair.b.receive_datagram(forged, ("198.18.0.1", 4500), pair.now)
    pair.collect()
    assert pair.b.state is IkeState.AUTH_WAIT and len(pair.of("b", ev.MessageDropped)) == 2
    assert not pair.b.datagrams_to_send(pair.now)
    pair.b.receive_datagram(intermediate, ("198.18.0.1", 4500), pair.now)
    pair.run()
    assert pair.a.state is IkeState.ESTABLISHED and pair.b.state is IkeState.ESTABLISHED


@pytest.mark.parametrize("ke", [
    KePayload(DhGroup.ML_KEM_768, b"\x01" * 1183),  # wrong size
    KePayload(DhGroup.ECP_256, b"\x01" * 64),  # not the negotiated method
    None,  # no KE at all
])
def test_authenticated_but_wrong_intermediate_fails_cleanly(ke: KePayload | None) -> None:
    """From the key holder itself: INVALID_SYNTAX, both SAs close, nothing raises."""
    pair, _ = _at_intermediate()
    ctx = pair.a._ctx  # noqa: SLF001 - speak as the authenticated initiator
    data = ctx.encode(ExchangeType.IKE_INTERMEDIATE, 1, False, [ke] if ke else [])
    pair.b.receive_datagram(NON_ESP_MARKER + data, ("198.18.0.1", 4500), pair.now)
    ctx.pending = None  # the answer is to this forged request, not the one pending
    ctx.next_request_id = 1
    pair.run()
    assert pair.b.state is IkeState.CLOSED and "additional key exchange" in str(
        pair.b.close_reason)


def test_ike_auth_before_the_intermediate_exchange_is_dropped() -> None:
    pair, _ = _at_intermediate()
    ctx = pair.a._ctx  # noqa: SLF001
    data = ctx.encode(ExchangeType.IKE_AUTH, 1, False, [])
    pair.b.receive_datagram(NON_ESP_MARKER + data, ("198.18.0.1", 4500), pair.now)
    pair.collect()
    assert pair.b.state is IkeState.AUTH_WAIT
    assert [d.reason for d in pair.of("b", ev.MessageDropped)] == [
        "IKE_AUTH request out of sequence"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2000), st.integers(1, 255), st.integers(0, 5))
def test_tampered_ml_kem_handshake_never_raises_nor_disagrees(
    pos: int, xor: int, which: int
) -> None:
    """Flip one byte of one of the six handshake messages: drops or failures, never two
    established SAs with different keys."""
    make_pair(config("A", ike=BOTH), config("B", ike=BOTH)).run_tampered(6, which, pos, xor)


@pytest.mark.parametrize("ke", [
    KePayload(DhGroup.ML_KEM_768, b"\x01" * 1183),  # wrong size
    KePayload(DhGroup.ECP_256, b"\x01" * 64),  # not the negotiated method
    None,  # no KE at all
])
def test_authenticated_but_wrong_followup_keeps_both_sas(ke: KePayload | None) -> None:
    """An IKE_FOLLOWUP_KE from the key holder with a wrong KE gets INVALID_SYNTAX; the rekey
    is abandoned, the working IKE SA and CHILD_SA stay on both sides, nothing raises, and
    the next rekey works."""
    pair, _ = _establish(PQ, PQ)
    pair.a.rekey_ike(pair.now)
    for data, _ in pair.a.datagrams_to_send(pair.now):
        pair.b.receive_datagram(data, ("198.18.0.1", 4500), pair.now)
    for data, _ in pair.b.datagrams_to_send(pair.now):
        pair.a.receive_datagram(data, ("198.18.0.2", 4500), pair.now)
    new = pair.a._rekeying  # noqa: SLF001
    assert new is not None and pair.a.datagrams_to_send(pair.now)  # the real one, dropped
    ctx = pair.a._ctx  # noqa: SLF001 - speak as the authenticated initiator instead
    assert ctx.pending is not None
    link = NotifyPayload(NotifyType.ADDITIONAL_KEY_EXCHANGE, new.link)
    forged = ctx.encode(ExchangeType.IKE_FOLLOWUP_KE, ctx.pending.message_id, False,
                        [ke, link] if ke else [link])
    ctx.pending.data = forged  # as if this had been our request
    pair.b.receive_datagram(NON_ESP_MARKER + forged, ("198.18.0.1", 4500), pair.now)
    pair.run()
    (failed,) = pair.of("a", ev.IkeRekeyFailed)
    assert "INVALID_SYNTAX" in failed.reason and pair.of("b", ev.IkeRekeyFailed)
    for sa in (pair.a, pair.b):
        assert sa.state is IkeState.ESTABLISHED and len(sa.children) == 1
        assert sa._passive is None and sa._rekeying is None  # noqa: SLF001
    pair.b.rekey_ike(pair.now)
    pair.run()
    _works(pair)
