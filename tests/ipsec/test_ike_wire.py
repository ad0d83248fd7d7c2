"""Our responder fed strongSwan 5.9.8's own IKE_SA_INIT bytes, and identity types."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from sslvpn.ipsec.ike import events as ev
from sslvpn.ipsec.ike.config import Identity
from sslvpn.ipsec.ike.constants import DhGroup, IdType, NotifyType, PayloadType
from sslvpn.ipsec.ike.crypto import natd_hash
from sslvpn.ipsec.ike.messages import (
    KePayload,
    NotifyPayload,
    SaPayload,
    UnknownPayload,
    notifies,
    pull_message,
)
from sslvpn.ipsec.ike.sa import IkeSa, IkeState

from .ike_pair import config, establish, make_pair, seeded

FIXTURE = json.loads(
    (Path(__file__).parent.parent / "fixtures/ipsec/strongswan_psk_modp2048.json").read_text()
)
REQUEST = bytes.fromhex(FIXTURE["ike_sa_init_request"])
SITE_A = ("198.18.0.1", 500)


def _responder(ike: str) -> IkeSa:
    return IkeSa(config("B", ike=ike), ("198.18.0.2", 500), SITE_A, initiator=False,
                 rand=seeded(7))


def test_responder_answers_strongswans_init() -> None:
    sa = _responder("aes256-sha256-modp2048")
    sa.receive_datagram(REQUEST, SITE_A, 0.0)
    ((data, dest),) = sa.datagrams_to_send(0.0)
    assert dest == SITE_A and not data.startswith(bytes(4))
    answer = pull_message(data)
    request = pull_message(REQUEST)
    assert answer.header.spi_i == request.header.spi_i and answer.header.is_response
    (sa_payload,) = [p for p in answer.payloads if isinstance(p, SaPayload)]
    (proposal,) = sa_payload.proposals
    assert proposal.number == 1 and len(proposal.transforms) == 4
    (ke,) = [p for p in answer.payloads if isinstance(p, KePayload)]
    assert ke.group == DhGroup.MODP_2048 and len(ke.data) == 256
    found = notifies(answer.payloads)
    spis = (answer.header.spi_i, answer.header.spi_r)
    # NATD_D is the address we saw strongSwan at; NATD_S is faked (forced encapsulation)
    assert found[NotifyType.NAT_DETECTION_DESTINATION_IP].data == natd_hash(
        *spis, bytes([198, 18, 0, 1]), 500)
    assert found[NotifyType.NAT_DETECTION_SOURCE_IP].data != natd_hash(
        *spis, bytes([198, 18, 0, 2]), 500)
    assert sa.state is IkeState.AUTH_WAIT and sa.half_open
    # a retransmitted request gets the identical answer
    sa.receive_datagram(REQUEST, SITE_A, 1.0)
    assert sa.datagrams_to_send(1.0) == [(data, SITE_A)]


def test_responder_asks_for_another_group_without_keeping_state() -> None:
    sa = _responder("aes256-sha256-curve25519")
    sa.receive_datagram(REQUEST, SITE_A, 0.0)
    ((data, _),) = sa.datagrams_to_send(0.0)
    answer = pull_message(data)
    assert answer.header.spi_r == bytes(8)
    assert answer.payloads == [NotifyPayload(NotifyType.INVALID_KE_PAYLOAD, b"\x00\x1f")]
    assert sa.state is IkeState.INITIAL and not sa.local_spis


def test_responder_refuses_unknown_proposals() -> None:
    sa = _responder("aes256gcm16-prfsha256-ecp256")
    sa.receive_datagram(REQUEST, SITE_A, 0.0)
    ((data, _),) = sa.datagrams_to_send(0.0)
    assert pull_message(data).payloads == [NotifyPayload(NotifyType.NO_PROPOSAL_CHOSEN)]
    events = []
    while (e := sa.next_event()) is not None:
        events.append(e)
    assert isinstance(events[0], ev.NoProposalChosen) and sa.state is IkeState.CLOSED


def test_ip_address_identities() -> None:
    a = replace(config("A"), local_id=Identity.parse("198.18.0.1"),
                remote_id=Identity.parse("198.18.0.2"))
    b = replace(config("B"), local_id=Identity.parse("198.18.0.2"),
                remote_id=Identity.parse("198.18.0.1"))
    assert a.local_id.id_type == IdType.IPV4_ADDR and a.local_id.data == bytes([198, 18, 0, 1])
    pair = establish(make_pair(a, b))
    (est,) = pair.of("b", ev.IkeSaEstablished)
    assert est.remote_id == "198.18.0.1"
    # FQDN "198.18.0.1" is not IPV4_ADDR 198.18.0.1: identities match by type and value
    wrong = replace(b, remote_id=Identity(IdType.FQDN, b"198.18.0.1"))
    assert establish(make_pair(a, wrong)).of("b", ev.AuthenticationFailed)


def test_unknown_critical_payload_is_refused() -> None:
    pair = establish(make_pair())
    ctx = pair.b._ctx  # noqa: SLF001 - build a request the way the peer would
    data = ctx.encode(37, 0, False, [UnknownPayload(PayloadType.CP + 100, True, b"x")])
    pair.a.receive_datagram(bytes(4) + data, ("198.18.0.2", 4500), pair.now)
    ((reply, _),) = pair.a.datagrams_to_send(pair.now)
    payloads = pair.b._ctx.decrypt(reply[4:], pull_message(reply[4:]))  # noqa: SLF001
    assert payloads == [NotifyPayload(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, bytes([147]))]


def test_initiator_accepts_strongswans_real_ike_auth_response() -> None:
    """Replay strongSwan's IKE_AUTH response into an initiator holding the lab's keys."""
    from sslvpn.ipsec.ike.constants import EncrId, IntegId, PrfId
    from sslvpn.ipsec.ike.crypto import IkeKeys
    from sslvpn.ipsec.ike.proposals import Suite
    from sslvpn.ipsec.ike.sa import IkeState
    from sslvpn.ipsec.ike.window import PendingRequest, RequestState

    def h(name: str) -> bytes:
        return bytes.fromhex(FIXTURE[name])

    sk = FIXTURE["auth_response_sk"]
    response = bytes.fromhex(sk["assoc"]) + bytes.fromhex(sk["iv"]) + bytes.fromhex(
        sk["encrypted"])
    init_response = pull_message(h("ike_sa_init_response"))
    sa = IkeSa(config("A", esp="aes256gcm16,aes256-sha256"), SITE_A, ("198.18.0.2", 500),
               initiator=True, rand=seeded(3))
    ctx = sa._ctx  # noqa: SLF001 - put the initiator where strongSwan's siteA was
    ctx.spi_i, ctx.spi_r = init_response.header.spi_i, init_response.header.spi_r
    suite = Suite(EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_256_128, PrfId.HMAC_SHA2_256,
                  DhGroup.MODP_2048)
    keys = IkeKeys(*(h(n) for n in ("sk_d", "sk_ai", "sk_ar", "sk_ei", "sk_er", "sk_pi",
                                    "sk_pr")))
    ctx.install_keys(suite, keys, seeded(4))
    ctx.next_request_id = 2
    ctx.pending = PendingRequest(1, 35, b"", "auth", RequestState(spi=bytes.fromhex("ec15c467")),
                                 next_send=10.0)
    sa._ni, sa._nr = h("nonce_i_from_octets"), h("nonce_r_from_octets")  # noqa: SLF001
    sa._init_request, sa._init_response = REQUEST, h("ike_sa_init_response")  # noqa: SLF001
    sa.state, sa.encapsulated = IkeState.AUTH_SENT, True
    sa.remote_addr = ("198.18.0.2", 4500)
    sa.receive_datagram(bytes(4) + response, ("198.18.0.2", 4500), 1.0)
    events = []
    while (e := sa.next_event()) is not None:
        events.append(e)
    assert [type(e) for e in events] == [ev.IkeSaEstablished, ev.ChildSaEstablished], events
    child = events[1]
    assert isinstance(child, ev.ChildSaEstablished)
    assert (child.spi_in, child.spi_out) == (0xEC15C467, 0xB88EC964)
    assert child.keys_out.encryption == h("child_encr_i")
    assert child.keys_in.encryption == h("child_encr_r")
    assert child.cipher.name == "aes256gcm16"
    assert [str(t) for t in child.remote_ts] == ["10.2.0.0/24"]
