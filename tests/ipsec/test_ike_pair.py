"""Pair tests: our initiator and our responder exchanging bytes in memory."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sslvpn.ipsec.ike import events as ev
from sslvpn.ipsec.ike.constants import NON_ESP_MARKER
from sslvpn.ipsec.ike.sa import IkeState
from sslvpn.ipsec.ike.traffic_selectors import TrafficSelector

from .ike_pair import Pair, config, establish, make_pair

IKE = [
    f"{cipher}-{group}"
    for cipher in ("aes256gcm16-prfsha256", "aes256-sha256")
    for group in ("modp2048", "ecp256", "curve25519")
]
ESP = ["aes256gcm16", "aes256-sha256"]


def _child_pair(pair: Pair) -> tuple[ev.ChildSaEstablished, ev.ChildSaEstablished]:
    (a,) = pair.of("a", ev.ChildSaEstablished)
    (b,) = pair.of("b", ev.ChildSaEstablished)
    return a, b


@pytest.mark.parametrize("esp", ESP)
@pytest.mark.parametrize("ike", IKE)
def test_every_proposal_combination_establishes(ike: str, esp: str) -> None:
    pair = establish(make_pair(config("A", ike=ike, esp=esp), config("B", ike=ike, esp=esp)))
    assert pair.a.state is IkeState.ESTABLISHED and pair.b.state is IkeState.ESTABLISHED
    (ike_a,) = pair.of("a", ev.IkeSaEstablished)
    (ike_b,) = pair.of("b", ev.IkeSaEstablished)
    assert ike_a.suite == ike_b.suite and ike_a.suite.name.startswith(ike.split("-")[0])
    assert (ike_a.remote_id, ike_b.remote_id) == ("siteB.lab", "siteA.lab")
    a, b = _child_pair(pair)
    assert (a.spi_in, a.spi_out) == (b.spi_out, b.spi_in)
    assert a.keys_out == b.keys_in and a.keys_in == b.keys_out and a.keys_in != a.keys_out
    key_len = 36 if esp == "aes256gcm16" else 32
    assert len(a.keys_out.encryption) == key_len
    assert len(a.keys_out.integrity) == (0 if esp == "aes256gcm16" else 32)
    assert a.cipher == b.cipher and a.cipher.name == esp
    assert [str(t) for t in a.local_ts] == ["10.1.0.0/24"]
    assert [str(t) for t in a.remote_ts] == ["10.2.0.0/24"]
    assert a.local_ts == b.remote_ts
    # NAT-T forced: both sides now talk on 4500 with the non-ESP marker
    assert pair.a.encapsulated and pair.b.encapsulated
    assert pair.a.remote_addr == ("198.18.0.2", 4500)
    assert pair.b.remote_addr == ("198.18.0.1", 4500)
    assert not pair.events["a"][2:] and not pair.of("b", ev.MessageDropped)


def test_wrong_psk_fails_on_both_sides() -> None:
    pair = establish(make_pair(config("A"), config("B", psk=b"another secret")))
    assert pair.of("a", ev.AuthenticationFailed) and pair.of("b", ev.AuthenticationFailed)
    assert pair.a.state is IkeState.CLOSED and pair.b.state is IkeState.CLOSED
    assert not pair.of("a", ev.ChildSaEstablished) and not pair.of("b", ev.ChildSaEstablished)
    assert pair.a.status.startswith("closed: authentication failed")


def test_wrong_identity_fails_authentication() -> None:
    b_cfg = replace(config("B"), remote_id=config("A").remote_id)
    pair = establish(make_pair(config("A"), b_cfg))
    assert pair.of("a", ev.AuthenticationFailed) and pair.of("b", ev.AuthenticationFailed)


def test_ike_proposal_mismatch_is_no_proposal_chosen_on_both() -> None:
    pair = establish(make_pair(config("A", ike="aes256gcm16-prfsha256-ecp256"),
                               config("B", ike="aes256-sha256-modp2048")))
    (a,) = pair.of("a", ev.NoProposalChosen)
    (b,) = pair.of("b", ev.NoProposalChosen)
    assert a.exchange == b.exchange == "IKE_SA_INIT"
    assert pair.a.state is IkeState.CLOSED and "NO_PROPOSAL_CHOSEN" in pair.a.status


def test_esp_proposal_mismatch_keeps_the_ike_sa() -> None:
    pair = establish(make_pair(config("A", esp="aes256gcm16"), config("B", esp="aes256-sha256")))
    (a,) = pair.of("a", ev.NoProposalChosen)
    (b,) = pair.of("b", ev.NoProposalChosen)
    assert a.exchange == b.exchange == "IKE_AUTH"
    assert pair.a.state is IkeState.ESTABLISHED and pair.b.state is IkeState.ESTABLISHED
    assert not pair.a.children and not pair.b.children
    assert "no proposal chosen in IKE_AUTH" in pair.a.status
    assert "no proposal chosen in IKE_AUTH" in pair.b.status


def test_invalid_ke_retry_keeps_spi_and_establishes() -> None:
    pair = make_pair(config("A", ike="aes256-sha256-ecp256,aes256-sha256-modp2048"),
                     config("B", ike="aes256-sha256-modp2048"))
    spi = pair.a.local_spi
    establish(pair)
    assert pair.a.state is IkeState.ESTABLISHED
    assert pair.a.local_spi == spi
    (est,) = pair.of("a", ev.IkeSaEstablished)
    assert est.suite.dh == 14


def test_traffic_selectors_are_narrowed_by_the_responder() -> None:
    wide = replace(config("A"), remote_ts=(TrafficSelector.from_network("10.0.0.0/8"),))
    pair = establish(make_pair(wide, config("B")))
    a, b = _child_pair(pair)
    assert [str(t) for t in a.remote_ts] == ["10.2.0.0/24"]
    assert [str(t) for t in b.local_ts] == ["10.2.0.0/24"]


def test_ts_mismatch_is_reported_and_ike_stays() -> None:
    other = replace(config("B"), local_ts=(TrafficSelector.from_network("10.9.0.0/24"),))
    pair = establish(make_pair(config("A"), other))
    assert pair.of("a", ev.ChildSaFailed) and pair.of("b", ev.ChildSaFailed)
    assert pair.a.state is IkeState.ESTABLISHED


def test_without_nat_and_without_forced_encap_ike_stays_on_500() -> None:
    pair = establish(make_pair(config("A", force_encap=False), config("B", force_encap=False)))
    assert pair.a.state is IkeState.ESTABLISHED
    assert not pair.a.encapsulated and not pair.b.encapsulated
    assert not pair.a.behind_nat and not pair.b.behind_nat


def test_real_nat_is_detected_and_both_float() -> None:
    """A sits behind a NAT (10.0.0.2 -> 198.18.0.50, ports remapped); no faking."""
    from sslvpn.ipsec.ike.sa import IkeSa

    from .ike_pair import seeded

    a = IkeSa(config("A", force_encap=False), ("10.0.0.2", 500), ("198.18.0.2", 500),
              initiator=True, rand=seeded(5))
    b = IkeSa(config("B", force_encap=False), ("198.18.0.2", 500), ("198.18.0.50", 1500),
              initiator=False, rand=seeded(6))
    outside = {500: 1500, 4500: 1501}
    a.initiate(0.0)
    for _ in range(10):
        for data, dest in a.datagrams_to_send(0.0):
            port = 4500 if data.startswith(NON_ESP_MARKER) else 500
            assert dest == ("198.18.0.2", port)
            b.receive_datagram(data, ("198.18.0.50", outside[port]), 0.0)
        for data, dest in b.datagrams_to_send(0.0):
            port = 4500 if data.startswith(NON_ESP_MARKER) else 500
            assert dest == ("198.18.0.50", outside[port])  # back through the NAT mapping
            a.receive_datagram(data, ("198.18.0.2", port), 0.0)
    assert a.state is IkeState.ESTABLISHED and b.state is IkeState.ESTABLISHED
    assert a.encapsulated and b.encapsulated
    assert a.behind_nat and not b.behind_nat
    assert b.remote_addr == ("198.18.0.50", 1501)
