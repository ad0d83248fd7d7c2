"""The ``default`` proposal lists: what they accept as responder, what they propose as
initiator, and whole handshakes and rekeys of our core against single-proposal peers."""

from __future__ import annotations

import pytest

from sslvpn.ipsec.ike import events as ev
from sslvpn.ipsec.ike import proposals as pr
from sslvpn.ipsec.ike.constants import DhGroup, EncrId, IntegId, PrfId, ProtocolId
from sslvpn.ipsec.ike.sa import IkeState

from .ike_pair import Pair, config, establish, make_pair

IKE, ESP = ProtocolId.IKE, ProtocolId.ESP
GROUPS = ["modp2048", "ecp256", "ecp384", "ecp521", "curve25519"]
INTEGS = ["sha256", "sha384", "sha512"]
IKE_SUITES = [f"aes{bits}gcm16-prf{h}-{g}" for bits in (128, 256) for h in INTEGS
              for g in GROUPS] + [f"aes{bits}-{h}-{g}" for bits in (128, 256)
                                  for h in INTEGS for g in GROUPS]
ESP_SUITES = [f"aes{bits}gcm16" for bits in (128, 256)] + [
    f"aes{bits}-{h}" for bits in (128, 256) for h in INTEGS]
WEAK = ["aes128-sha1-modp2048", "3des-sha256-modp2048", "aes128-md5-modp2048",
        "aes128-sha256-modp1024", "des-sha256-ecp256"]


def _offer(text: str, protocol: ProtocolId) -> list[pr.Proposal]:
    return pr.build_proposals(pr.parse_proposals(text, protocol),
                              b"\x01" * (8 if protocol == IKE else 4))


@pytest.mark.parametrize("suite", IKE_SUITES)
def test_default_accepts_every_supported_ike_suite_as_offered(suite: str) -> None:
    chosen = pr.select(pr.parse_proposals("default", IKE), _offer(suite, IKE))
    assert chosen is not None and chosen[1].name == suite
    assert chosen[1] == pr.select(pr.parse_proposals(suite, IKE), _offer(suite, IKE))[1]  # type: ignore[index]


@pytest.mark.parametrize("pfs", ["", "-ecp384", "-modp2048", "-curve25519", "-ecp521"])
@pytest.mark.parametrize("suite", ESP_SUITES)
def test_default_accepts_every_esp_suite_with_and_without_pfs(suite: str, pfs: str) -> None:
    chosen = pr.select(pr.parse_proposals("default", ESP), _offer(suite + pfs, ESP))
    assert chosen is not None and chosen[1].name == suite + pfs


def test_default_never_accepts_weak_algorithms() -> None:
    for spec in pr.parse_proposals("default", IKE) + pr.parse_proposals("default", ESP):
        assert {e for e, _ in spec.encrs} <= {EncrId.AES_GCM_16, EncrId.AES_CBC}
        assert IntegId.HMAC_SHA1_96 not in spec.integs and PrfId.HMAC_SHA1 not in spec.prfs
        assert all(g in (DhGroup.MODP_2048, DhGroup.ECP_256, DhGroup.ECP_384, DhGroup.ECP_521,
                         DhGroup.CURVE25519) for g in spec.dhs)
    for weak in WEAK:  # we cannot even parse them, so no operator can configure them
        with pytest.raises(pr.ProposalError):
            pr.parse_proposals(weak, IKE)


def test_as_initiator_the_strongest_suite_comes_first() -> None:
    ike = pr.parse_proposals("default", IKE)
    assert [spec.aead for spec in ike] == [True, False]
    assert ike[0].encrs[0] == (EncrId.AES_GCM_16, 256) and ike[0].prfs[0] == PrfId.HMAC_SHA2_512
    assert ike[0].dhs[0] == DhGroup.ECP_521 and ike[1].integs[0] == IntegId.HMAC_SHA2_512_256
    esp = pr.parse_proposals("default", ESP)
    assert esp[0].encrs[0] == (EncrId.AES_GCM_16, 256) and not esp[0].dhs  # no PFS first
    assert all(spec.dhs for spec in esp[2:])


def test_default_may_be_mixed_with_explicit_proposals() -> None:
    specs = pr.parse_proposals("aes128-sha256-modp2048, default", IKE)
    assert len(specs) == 3 and specs[0].encrs == ((EncrId.AES_CBC, 128),)
    with pytest.raises(pr.ProposalError, match="empty"):
        pr.parse_proposals(" , ", IKE)


def test_the_peers_ke_group_is_kept_when_both_accept_it() -> None:
    """An initiator whose first proposal lists ecp256 before ecp384 but sent KE for ecp384
    gets ecp384 (no INVALID_KE_PAYLOAD round trip); without a KE our order decides."""
    offer = _offer("aes256-sha256-ecp256-ecp384", IKE)
    specs = pr.parse_proposals("default", IKE)
    assert pr.select(specs, offer, ke_group=DhGroup.ECP_256)[1].dh == DhGroup.ECP_256  # type: ignore[index]
    assert pr.select(specs, offer)[1].dh == DhGroup.ECP_384  # type: ignore[index]
    assert pr.select(specs, offer, ke_group=DhGroup.MODP_2048)[1].dh == DhGroup.ECP_384  # type: ignore[index]


def _established(pair: Pair) -> tuple[ev.IkeSaEstablished, ev.ChildSaEstablished]:
    assert pair.a.state is IkeState.ESTABLISHED and pair.b.state is IkeState.ESTABLISHED
    (ike_a,) = pair.of("a", ev.IkeSaEstablished)
    (ike_b,) = pair.of("b", ev.IkeSaEstablished)
    child_a, child_b = pair.of("a", ev.ChildSaEstablished)[-1], pair.of(
        "b", ev.ChildSaEstablished)[-1]
    assert ike_a.suite == ike_b.suite and child_a.cipher == child_b.cipher
    assert child_a.keys_out == child_b.keys_in and child_a.keys_in == child_b.keys_out
    return ike_a, child_a


PAIR_CASES = [
    ("aes256-sha256-modp2048", "aes256-sha256"),
    ("aes256-sha256-ecp256", "aes128-sha384"),
    ("aes256-sha256-curve25519", "aes256-sha512"),
    ("aes128-sha384-ecp384", "aes128gcm16"),
    ("aes256-sha512-ecp521", "aes256gcm16"),
    ("aes128gcm16-prfsha512-ecp521", "aes256-sha512"),
]


@pytest.mark.parametrize(("ike", "esp"), PAIR_CASES)
@pytest.mark.parametrize("default_side", ["responder", "initiator"])
def test_default_side_establishes_with_a_single_proposal_peer(
    ike: str, esp: str, default_side: str
) -> None:
    """The whole handshake (DH, key derivation, SK protection with SHA-384/512) both ways."""
    if default_side == "initiator":
        pair = make_pair(config("A", ike="default", esp="default"),
                         config("B", ike=ike, esp=esp))
    else:
        pair = make_pair(config("A", ike=ike, esp=esp),
                         config("B", ike="default", esp="default"))
    establish(pair)
    ike_event, child = _established(pair)
    assert ike_event.suite.name == ike and child.cipher.name == esp
    assert not pair.of("a", ev.MessageDropped) and not pair.of("b", ev.MessageDropped)


def test_two_default_sides_agree_on_the_strongest_suite() -> None:
    pair = establish(make_pair(config("A", ike="default", esp="default"),
                               config("B", ike="default", esp="default")))
    ike_event, child = _established(pair)
    assert ike_event.suite.name == "aes256gcm16-prfsha512-ecp521"
    assert child.cipher.name == "aes256gcm16"


@pytest.mark.parametrize("who", ["a", "b"])
def test_child_rekey_with_pfs_against_default(who: str) -> None:
    """A peer that insists on PFS rekeys its CHILD_SA with the default side, either side
    starting it: the default side picks the peer's group and sends no INVALID_KE."""
    pair = establish(make_pair(config("A", ike="aes256-sha384-ecp384",
                                      esp="aes256-sha384-curve25519"),
                               config("B", ike="default", esp="default")))
    _established(pair)
    (pair.a if who == "a" else pair.b).rekey_child(pair.now)
    pair.run()
    latest = pair.of("a", ev.ChildSaEstablished)[-1]
    if who == "a":
        assert latest.cipher.name == "aes256-sha384-curve25519"
        assert latest.rekeyed_from is not None
    assert len(pair.a.children) == len(pair.b.children) == 1
    assert not pair.of("a", ev.MessageDropped) and not pair.of("b", ev.MessageDropped)
