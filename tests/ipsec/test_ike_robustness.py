"""Peer garbage never raises out of an IkeSa in any state: it becomes a counted drop."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sslvpn.ipsec.ike import events as ev
from sslvpn.ipsec.ike import messages as m
from sslvpn.ipsec.ike.constants import NON_ESP_MARKER
from sslvpn.ipsec.ike.messages import IkeHeader, encode_message, pull_message
from sslvpn.ipsec.ike.sa import IkeState

from . import test_ike_messages
from .ike_pair import establish, make_pair

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.lists(st.binary(max_size=300), max_size=5), st.booleans())
def test_random_datagrams_never_raise(datagrams: list[bytes], marker: bool) -> None:
    pair = establish(make_pair())
    fresh = make_pair().b
    for data in datagrams:
        data = NON_ESP_MARKER + data if marker else data
        for sa in (pair.a, pair.b, fresh):
            sa.receive_datagram(data, ("198.18.0.9", 4500), pair.now)
            sa.handle_timer(pair.now)
    assert pair.a.state is IkeState.ESTABLISHED and pair.b.state is IkeState.ESTABLISHED


@SETTINGS
@given(st.integers(0, 10_000), st.integers(1, 255), st.integers(0, 3))
def test_tampered_handshake_never_raises_nor_establishes_mismatched_keys(
    pos: int, xor: int, which: int
) -> None:
    """Flip one byte of one handshake message: the SAs drop or fail, never disagree."""
    make_pair().run_tampered(4, which, pos, xor)


def test_init_request_with_a_bad_message_id_leaves_no_state() -> None:
    pair = make_pair()
    pair.a.initiate(pair.now)
    ((data, _),) = pair.a.datagrams_to_send(pair.now)
    message = pull_message(data)
    header = message.header
    bad = encode_message(IkeHeader(header.spi_i, header.spi_r, 0, header.exchange, 0x08, 5),
                         message.payloads)
    pair.b.receive_datagram(bad, ("198.18.0.1", 500), pair.now)
    pair.collect()
    assert pair.b.state is IkeState.INITIAL
    assert pair.of("b", ev.MessageDropped)


@SETTINGS
@given(
    st.lists(test_ike_messages._payload, max_size=7),
    st.sampled_from([35, 36, 37, 99]),
    st.booleans(),
)
def test_authenticated_but_absurd_requests_never_raise(
    payloads: list[m.Payload], exchange: int, response: bool
) -> None:
    """A peer holding the keys sends nonsense: still only drops or error notifies."""
    pair = establish(make_pair())
    ctx = pair.b._ctx  # noqa: SLF001 - speak as the authenticated peer
    message_id = ctx.pending.message_id if response and ctx.pending else ctx.next_request_id
    data = ctx.encode(exchange, message_id, response, payloads)
    pair.a.receive_datagram(NON_ESP_MARKER + data, ("198.18.0.2", 4500), pair.now)
    pair.a.handle_timer(pair.now + 1)
    pair.collect()
    assert pair.a.state in (IkeState.ESTABLISHED, IkeState.CLOSED)
