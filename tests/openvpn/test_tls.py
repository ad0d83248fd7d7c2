"""TLS engine over memory BIOs: handshake, plaintext records, EKM, refusal reasons."""

from __future__ import annotations

import pytest
from OpenSSL import SSL

from sslvpn.openvpn.constants import DEFAULT_TLS_GROUPS, EKM_LABEL_DATA_KEYS
from sslvpn.openvpn.tls import (
    TlsContext,
    TlsCredentials,
    TlsEngine,
    TlsError,
    TlsGroupsError,
    checked_tls_groups,
    client_auth_problem,
)
from sslvpn.store.models import GatewaySettings
from tests.openvpn.conftest import Issued, Pki

EKM_DATA_KEYS_LABEL_B = EKM_LABEL_DATA_KEYS.encode()


def _pump(client: TlsEngine, server: TlsEngine) -> tuple[list[bytes], list[bytes]]:
    """Shuttle bytes until both sides are quiet; return plaintext each side received."""
    got_client: list[bytes] = []
    got_server: list[bytes] = []
    for _ in range(20):
        got_client += client.process()
        to_server = client.outgoing()
        server.receive(to_server)
        got_server += server.process()
        to_client = server.outgoing()
        client.receive(to_client)
        if not to_server and not to_client:
            break
    got_client += client.process()
    return got_client, got_server


def test_handshake_records_and_ekm_agree(pki: Pki) -> None:
    client, server = TlsEngine(pki.client_context()), TlsEngine(pki.server_context())
    client.send(b"km2 record")
    client.send(b"PUSH_REQUEST\0")
    got_client, got_server = _pump(client, server)
    assert client.handshake_done and server.handshake_done
    assert got_server == [b"km2 record", b"PUSH_REQUEST\0"]
    server.send(b"PUSH_REPLY,ping 10\0")
    got_client, _ = _pump(client, server)
    assert got_client == [b"PUSH_REPLY,ping 10\0"]
    assert server.verify_error is None
    peer = server.peer_certificate()
    assert peer is not None and peer == pki.client.certificate
    assert client_auth_problem(peer) is None
    ekm = server.export_keying_material(EKM_DATA_KEYS_LABEL_B, 256)
    assert len(ekm) == 256 and ekm == client.export_keying_material(EKM_DATA_KEYS_LABEL_B, 256)
    assert server.version in ("TLSv1.2", "TLSv1.3")


def test_ekm_with_tls12(pki: Pki) -> None:
    ctx = pki.client_context()
    ctx.context.set_max_proto_version(SSL.TLS1_2_VERSION)
    client, server = TlsEngine(ctx), TlsEngine(pki.server_context())
    _pump(client, server)
    assert server.version == "TLSv1.2"
    assert server.export_keying_material(EKM_DATA_KEYS_LABEL_B, 256) == (
        client.export_keying_material(EKM_DATA_KEYS_LABEL_B, 256)
    )


def test_tls11_is_refused(pki: Pki) -> None:
    ctx = pki.client_context()
    ctx.context.set_min_proto_version(SSL.TLS1_VERSION)
    ctx.context.set_max_proto_version(SSL.TLS1_1_VERSION)
    client, server = TlsEngine(ctx), TlsEngine(pki.server_context())
    with pytest.raises(TlsError):
        _pump(client, server)
    assert not server.handshake_done


@pytest.mark.parametrize(
    ("who", "reason"),
    [
        ("foreign_client", "not issued by our CA"),
        ("expired_client", "expired"),
    ],
)
def test_bad_chain_completes_handshake_with_reason(pki: Pki, who: str, reason: str) -> None:
    issued: Issued = getattr(pki, who)
    ctx = pki.client_context(issued)
    client, server = TlsEngine(ctx), TlsEngine(pki.server_context())
    _pump(client, server)
    assert server.handshake_done
    assert server.verify_error is not None and reason in server.verify_error


def test_wrong_eku_is_named(pki: Pki) -> None:
    problem = client_auth_problem(pki.server_eku_client.certificate)
    assert problem is not None and "clientAuth" in problem
    assert client_auth_problem(pki.server.certificate) is not None


def test_ekm_before_handshake_raises(pki: Pki) -> None:
    with pytest.raises(TlsError):
        TlsEngine(pki.server_context()).export_keying_material(EKM_DATA_KEYS_LABEL_B, 256)


def test_garbage_ciphertext_fails_the_engine(pki: Pki) -> None:
    server = TlsEngine(pki.server_context())
    server.receive(b"\x16\x03\x01\x00\x05hello-not-tls" * 3)
    with pytest.raises(TlsError):
        server.process()
    assert server.closed


def test_client_without_certificate_fails_the_handshake(pki: Pki) -> None:
    ctx = pki.client_context()
    bare = SSL.Context(SSL.TLS_METHOD)
    bare.set_verify(SSL.VERIFY_NONE, lambda *args: True)
    ctx.context = bare
    client, server = TlsEngine(ctx), TlsEngine(pki.server_context())
    with pytest.raises(TlsError):
        _pump(client, server)
    assert server.closed and server.peer_certificate() is None


def test_the_default_groups_put_the_hybrid_post_quantum_group_first() -> None:
    assert DEFAULT_TLS_GROUPS == "X25519MLKEM768:X25519:P-256"
    assert GatewaySettings().tls_groups == DEFAULT_TLS_GROUPS  # what init and the store use


def _client_offering(pki: Pki, groups: str) -> TlsContext:
    creds = TlsCredentials(pki.client.certificate, pki.client.key, (pki.ca.certificate,))
    return TlsContext(creds, server=False, groups=groups)


@pytest.mark.parametrize(("offered", "negotiated"), [
    ("X25519MLKEM768", "X25519MLKEM768"),  # OpenVPN 2.7 on AWS-LC offering only the hybrid
    (DEFAULT_TLS_GROUPS, "X25519MLKEM768"),
    ("X25519", "x25519"),  # OpenVPN 2.6 on OpenSSL 3.0 (no ML-KEM)
    ("P-256", "secp256r1"),
])
def test_the_server_picks_the_best_group_the_client_offers(
    pki: Pki, offered: str, negotiated: str
) -> None:
    client, server = TlsEngine(_client_offering(pki, offered)), TlsEngine(pki.server_context())
    assert server.group is None
    _pump(client, server)
    assert server.handshake_done and (server.group, client.group) == (negotiated, negotiated)


def test_a_client_with_no_group_of_ours_fails_the_handshake(pki: Pki) -> None:
    client, server = TlsEngine(_client_offering(pki, "ffdhe2048")), TlsEngine(pki.server_context())
    with pytest.raises(TlsError):
        _pump(client, server)
    assert not server.handshake_done


@pytest.mark.parametrize("groups", ["", "bogus", "X25519::P-256", "X25519:", "X25519:bogus"])
def test_groups_openssl_refuses_are_named_in_one_line(groups: str) -> None:
    with pytest.raises(TlsGroupsError, match="TLS groups"):
        checked_tls_groups(groups)


def test_a_refused_list_leaves_no_error_behind_for_the_next_handshake(pki: Pki) -> None:
    with pytest.raises(TlsGroupsError):
        checked_tls_groups("bogus")
    client, server = TlsEngine(pki.client_context()), TlsEngine(pki.server_context())
    _pump(client, server)
    assert server.handshake_done and server.group == "X25519MLKEM768"
