"""Proposal notation, responder selection, initiator acceptance and TS narrowing."""

from __future__ import annotations

import ipaddress

import pytest

from sslvpn.ipsec.ike import proposals as pr
from sslvpn.ipsec.ike.constants import DhGroup, EncrId, IntegId, PrfId, ProtocolId
from sslvpn.ipsec.ike.traffic_selectors import TrafficSelector, is_subset, narrow

IKE, ESP = ProtocolId.IKE, ProtocolId.ESP


def test_parse_strongswan_notation() -> None:
    gcm = pr.parse_proposal("aes256gcm16-prfsha256-ecp256", IKE)
    assert gcm.encrs == ((EncrId.AES_GCM_16, 256),)
    assert gcm.integs == () and gcm.prfs == (PrfId.HMAC_SHA2_256,)
    assert gcm.dhs == (DhGroup.ECP_256,)
    cbc = pr.parse_proposal("aes256-sha256-modp2048-curve25519", IKE)
    assert cbc.integs == (IntegId.HMAC_SHA2_256_128,)
    assert cbc.prfs == (PrfId.HMAC_SHA2_256,)  # derived from the integrity algorithm
    assert cbc.dhs == (DhGroup.MODP_2048, DhGroup.CURVE25519)
    assert pr.parse_proposal("aes256gcm16", ESP).dhs == ()
    assert len(pr.parse_proposals("aes256gcm16,aes256-sha256", ESP)) == 2


@pytest.mark.parametrize(
    ("text", "protocol"),
    [
        ("3des-sha1-modp1024", IKE),
        ("aes256-modp2048", IKE),  # no integrity
        ("aes256gcm16-ecp256", IKE),  # AEAD without prf
        ("aes256-sha256", IKE),  # no DH
        ("aes256-sha256-prfsha256", ESP),
        ("", ESP),
    ],
)
def test_bad_notation_is_refused(text: str, protocol: ProtocolId) -> None:
    with pytest.raises(pr.ProposalError):
        pr.parse_proposals(text, protocol)


def _offer(text: str, protocol: ProtocolId, spi: bytes = b"") -> list:  # type: ignore[type-arg]
    return pr.build_proposals(pr.parse_proposals(text, protocol), spi)


def test_select_picks_our_preference_and_answers_one_transform_each() -> None:
    ours = pr.parse_proposals("aes256gcm16-prfsha256-curve25519,aes256-sha256-modp2048", IKE)
    theirs = _offer("aes256-sha256-modp2048-ecp256,aes256gcm16-prfsha256-ecp256-curve25519", IKE)
    chosen = pr.select(ours, theirs)
    assert chosen is not None
    proposal, suite = chosen
    assert proposal.number == 2
    assert suite == pr.Suite(EncrId.AES_GCM_16, 256, IntegId.NONE, PrfId.HMAC_SHA2_256,
                             DhGroup.CURVE25519)
    answer = pr.answer_proposal(proposal, suite, b"")
    assert pr.accept_answer(
        pr.parse_proposals("aes256-sha256-modp2048-ecp256,aes256gcm16-prfsha256-ecp256-curve25519",
                           IKE), [answer]) == suite
    assert suite.name == "aes256gcm16-prfsha256-curve25519"


def test_mismatch_selects_nothing() -> None:
    ours = pr.parse_proposals("aes256gcm16-prfsha256-ecp256", IKE)
    assert pr.select(ours, _offer("aes256-sha256-modp2048", IKE)) is None
    assert pr.select(pr.parse_proposals("aes256gcm16", ESP), _offer("aes256-sha256", ESP)) is None


def test_key_length_must_match() -> None:
    ours = pr.parse_proposals("aes256-sha256", ESP)
    assert pr.select(ours, _offer("aes128-sha256", ESP, b"abcd")) is None


def test_esp_in_ike_auth_ignores_dh_and_pfs_must_agree_later() -> None:
    pfs = pr.parse_proposals("aes256gcm16-modp2048", ESP)
    offered = _offer("aes256gcm16-modp2048", ESP, b"abcd")
    chosen = pr.select([s.without_dh() for s in pfs], offered, ignore_dh=True)
    assert chosen is not None and chosen[1].dh == DhGroup.NONE
    assert pr.select(pr.parse_proposals("aes256gcm16", ESP), offered) is None
    assert pr.select(pfs, _offer("aes256gcm16", ESP, b"abcd")) is None
    ok = pr.select(pfs, offered)
    assert ok is not None and ok[1].dh == DhGroup.MODP_2048


def test_accept_answer_rejects_what_we_did_not_offer() -> None:
    ours = pr.parse_proposals("aes256gcm16", ESP)
    bogus = _offer("aes256-sha256", ESP, b"abcd")
    assert pr.accept_answer(ours, bogus) is None
    assert pr.accept_answer(ours, _offer("aes256gcm16,aes256gcm16", ESP, b"abcd")) is None


def ts(net: str, proto: int = 0, ports: tuple[int, int] = (0, 65535)) -> TrafficSelector:
    n = ipaddress.ip_network(net)
    return TrafficSelector(n.network_address, n.broadcast_address, proto, *ports)


def test_narrowing_intersects_with_policy() -> None:
    policy = [ts("10.1.0.0/24")]
    assert narrow([ts("10.0.0.0/8")], policy) == [ts("10.1.0.0/24")]
    assert narrow([ts("10.1.0.5/32"), ts("10.1.0.0/16")], policy) == [
        ts("10.1.0.5/32"), ts("10.1.0.0/24")
    ]
    assert narrow([ts("10.1.0.128/25", 6, (80, 80))], policy) == [ts("10.1.0.128/25", 6, (80, 80))]
    assert narrow([ts("10.9.0.0/24")], policy) == []
    assert narrow([ts("2001:db8::/64")], policy) == []


def test_initiator_accepts_only_subsets() -> None:
    offered = [ts("10.1.0.0/24")]
    assert is_subset([ts("10.1.0.0/25")], offered)
    assert not is_subset([ts("10.1.0.0/23")], offered)
    assert not is_subset([], offered)
