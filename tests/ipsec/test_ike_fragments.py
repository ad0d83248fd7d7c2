"""IKE fragmentation (RFC 7383): negotiation, our fragments, reassembly of the peer's, and
forged or excessive fragments that must never crash the SA or grow its memory."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sslvpn.ipsec.ike import events as ev
from sslvpn.ipsec.ike import fragments as fr
from sslvpn.ipsec.ike.constants import NON_ESP_MARKER, ExchangeType, NotifyType, PayloadType
from sslvpn.ipsec.ike.crypto import CbcHmacProtector, GcmProtector
from sslvpn.ipsec.ike.messages import (
    IkeHeader,
    NotifyPayload,
    SkfPayload,
    encode_message,
    notifies,
    pull_message,
)
from sslvpn.ipsec.ike.sa import IkeSa, IkeState
from sslvpn.ipsec.ike.traffic_selectors import TrafficSelector

from .ike_pair import A_ADDR, B_ADDR, Pair, config, establish, init_request, make_pair, seeded

SMALL = 160  # bytes per IKE message: a PSK IKE_AUTH needs 2-3 fragments


def _skf(data: bytes) -> bool:
    body = data[len(NON_ESP_MARKER):] if data.startswith(NON_ESP_MARKER) else data
    return len(body) > 17 and body[16] == PayloadType.SKF


def _traced(pair: Pair) -> list[tuple[str, int, bool]]:
    """(direction, exchange, is an SKF fragment) of every datagram put on the wire."""
    seen: list[tuple[str, int, bool]] = []

    def watch(direction: str, data: bytes) -> bool:
        body = data[4:] if data.startswith(NON_ESP_MARKER) else data
        seen.append((direction, body[18], _skf(data)))
        return False

    pair.drop = watch
    return seen


@pytest.mark.parametrize("ike", ["aes256gcm16-prfsha256-ecp256", "aes256-sha512-ecp384"])
def test_ike_auth_goes_in_fragments_and_the_sa_works(ike: str) -> None:
    pair = make_pair(config("A", ike=ike, fragment_size=SMALL),
                     config("B", ike=ike, fragment_size=SMALL))
    seen = _traced(pair)
    establish(pair)
    assert pair.a.state is IkeState.ESTABLISHED and pair.b.state is IkeState.ESTABLISHED
    assert pair.a.fragmentation and pair.b.fragmentation
    auth = [(d, frag) for d, e, frag in seen if e == ExchangeType.IKE_AUTH]
    assert [d for d, _ in auth].count("a") >= 2 and all(frag for _, frag in auth)
    assert all(not frag for _, e, frag in seen if e == ExchangeType.IKE_SA_INIT)
    (a,), (b,) = pair.of("a", ev.ChildSaEstablished), pair.of("b", ev.ChildSaEstablished)
    assert a.keys_out == b.keys_in
    assert not pair.of("a", ev.MessageDropped) and not pair.of("b", ev.MessageDropped)
    pair.b.rekey_child(pair.now)  # later exchanges are fragmented too, and work
    pair.run()
    assert len(pair.a.children) == len(pair.b.children) == 1


def test_a_lost_fragment_is_recovered_by_retransmitting_all_of_them() -> None:
    pair = make_pair(config("A", fragment_size=SMALL), config("B", fragment_size=SMALL))
    lost: list[bytes] = []

    def drop_second_fragment(direction: str, data: bytes) -> bool:
        if direction == "a" and _skf(data) and not lost:
            body = data[4:] if data.startswith(NON_ESP_MARKER) else data
            if struct.unpack_from("!H", body, 32)[0] == 2:
                lost.append(data)
                return True
        return False

    pair.drop = drop_second_fragment
    establish(pair)
    assert lost and pair.b.state is not IkeState.ESTABLISHED
    pair.advance(pair.now + 5)  # the initiator's first retransmission
    assert pair.a.state is IkeState.ESTABLISHED and pair.b.state is IkeState.ESTABLISHED


def test_a_message_needing_too_many_fragments_goes_whole_instead_of_failing() -> None:
    """At the smallest fragment size a tunnel may be given, an IKE_AUTH carrying 100 IPv6
    traffic selectors needs more than MAX_FRAGMENTS: it goes as one datagram (as without
    RFC 7383, left to IP fragmentation) instead of the SA never getting past IKE_SA_INIT."""
    many = tuple(TrafficSelector.from_network(f"fd00:{i:x}::/64") for i in range(100))
    size = fr.MIN_FRAGMENT_DATAGRAM - fr.DATAGRAM_OVERHEAD
    a, b = config("A", fragment_size=size), config("B", fragment_size=size)
    pair = make_pair(replace(a, local_ts=a.local_ts + many),
                     replace(b, remote_ts=b.remote_ts + many))
    seen = _traced(pair)
    establish(pair)
    assert pair.a.state is IkeState.ESTABLISHED and pair.b.state is IkeState.ESTABLISHED
    assert [frag for d, e, frag in seen if e == ExchangeType.IKE_AUTH] == [False, False]


def test_fragmentation_is_used_only_when_both_sides_announce_it() -> None:
    request = pull_message(init_request())
    assert NotifyType.IKEV2_FRAGMENTATION_SUPPORTED in notifies(request.payloads)
    stripped = [p for p in request.payloads if not (
        isinstance(p, NotifyPayload)
        and p.notify_type == NotifyType.IKEV2_FRAGMENTATION_SUPPORTED)]
    header = request.header
    data = encode_message(IkeHeader(header.spi_i, header.spi_r, 0, header.exchange,
                                    header.flags, 0), stripped)
    responder = IkeSa(config("B", ike="aes256-sha256-ecp256"), (B_ADDR, 500), (A_ADDR, 500),
                      initiator=False, rand=seeded(7))
    responder.receive_datagram(data, (A_ADDR, 500), 0.0)
    ((answer, _),) = responder.datagrams_to_send(0.0)
    assert NotifyType.IKEV2_FRAGMENTATION_SUPPORTED not in notifies(
        pull_message(answer).payloads)
    assert not responder.fragmentation


def test_without_negotiation_large_messages_stay_whole_and_fragments_are_dropped() -> None:
    pair = establish(make_pair(config("A", fragment_size=SMALL), config("B")))
    assert pair.a.fragmentation and pair.b.fragmentation  # both announce it by default
    pair.b.fragmentation = False  # as a peer that never announced it
    fragment = _fragment_of(pair, number=1, total=2)
    pair.b.receive_datagram(fragment, (A_ADDR, 4500), pair.now)
    pair.collect()
    (dropped,) = pair.of("b", ev.MessageDropped)
    assert dropped.kind == "bad-fragment"


def _fragment_of(pair: Pair, *, number: int, total: int, junk: bytes = bytes(48)) -> bytes:
    """An SKF request from A on the established SA (its content never gets decrypted)."""
    ctx = pair.b._ctx  # noqa: SLF001 - the test forges A's datagrams
    skf_len = 8 + len(junk)
    header = struct.pack("!8s8sBBBBII", ctx.spi_i, ctx.spi_r, PayloadType.SKF, 0x20,
                         ExchangeType.INFORMATIONAL, 0x08, ctx.peer_next_id, 28 + skf_len)
    return NON_ESP_MARKER + header + struct.pack("!BBHHH", 0, 0, skf_len, number, total) + junk


@given(junk=st.binary(min_size=0, max_size=600), number=st.integers(0, 70),
       total=st.integers(0, 70))
@settings(max_examples=150, deadline=None)
def test_forged_fragments_are_dropped_without_state(junk: bytes, number: int, total: int) -> None:
    pair = _established_pair()
    forged = _fragment_of(pair, number=number, total=total, junk=junk)
    pair.b.receive_datagram(forged, (A_ADDR, 4500), pair.now)
    pair.collect()
    assert pair.b._ctx.reassembly is None  # noqa: SLF001 and pair.b.state is IkeState.ESTABLISHED
    assert [e.kind for e in pair.of("b", ev.MessageDropped)] in (
        ["bad-fragment"], ["bad-integrity"], ["invalid"])


_PAIR: list[Pair] = []


def _established_pair() -> Pair:
    if not _PAIR:
        _PAIR.append(establish(make_pair(config("A"), config("B"))))
    pair = _PAIR[0]
    pair.events["b"].clear()
    return pair


def test_reassembly_limits() -> None:
    def skf(number: int, total: int) -> SkfPayload:
        return SkfPayload(PayloadType.NOTIFY, 28, number, total)

    assert fr.acceptable(skf(1, 1)) and fr.acceptable(skf(32, 32))
    assert not fr.acceptable(skf(0, 2)) and not fr.acceptable(skf(3, 2))
    assert not fr.acceptable(skf(1, fr.MAX_FRAGMENTS + 1))
    held = fr.Reassembly(5, False, 3)
    assert held.add(b"x" * 40, skf(2, 3), b"BB") is None
    assert held.add(b"x" * 40, skf(2, 3), b"ZZ") is None  # a duplicate changes nothing
    assert held.add(b"x" * 40, skf(1, 3), b"AA") is None
    assert held.add(b"x" * 40, skf(3, 3), b"CC") == b"AABBCC"
    big = fr.Reassembly(6, False, 3)
    assert big.add(b"", skf(1, 3), bytes(fr.MAX_REASSEMBLED - 10)) is None
    assert big.add(b"", skf(2, 3), bytes(20)) is None and 2 not in big.chunks
    assert big.size == fr.MAX_REASSEMBLED - 10


def test_a_message_too_large_for_the_fragment_limit_is_refused_locally() -> None:
    protector = GcmProtector(bytes(36))
    header = IkeHeader(bytes(8), bytes(8), 0, ExchangeType.IKE_AUTH, 0x08, 1)
    with pytest.raises(ValueError, match="more than 32 fragments"):
        fr.seal_fragments(header, PayloadType.NOTIFY, bytes(100_000), protector, 1228)
    cbc = CbcHmacProtector(bytes(32), bytes(32), seeded(1))
    frags = fr.seal_fragments(header, PayloadType.NOTIFY, bytes(5000), cbc, 1228)
    assert len(frags) == 5 and all(len(f) <= 1228 for f in frags)
