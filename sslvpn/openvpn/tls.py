"""The TLS engine of the control channel: pyOpenSSL ``Connection`` over memory BIOs.

One engine per key state (OpenVPN never uses TLS-level renegotiation: each key_id gets a
brand-new TLS session, ssl_openssl.c tls_ctx_set_options). The server role requires a
client certificate and reports chain, expiry and EKU problems as a refusal reason instead
of a TLS alert, so the session can answer ``AUTH_FAILED,<reason>`` the way 2.6 does for
policy failures. Revocation is the caller's business. pyOpenSSL is used rather than
``ssl.SSLObject`` because it offers RFC 5705 ``export_keying_material`` (tls-ekm).
Certificate validity is judged by OpenSSL against the system clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID
from OpenSSL import SSL, crypto
from OpenSSL._util import lib as _ssl_lib

from sslvpn.openvpn.constants import DEFAULT_TLS_GROUPS

READ_CHUNK = 16 * 1024 + 512  # one TLS record of plaintext, with room to spare

# OpenSSL X509_V_ERR_* codes we name in refusal reasons (x509_vfy.h).
_VERIFY_REASONS = {
    2: "issuer certificate unknown",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in chain",
    20: "certificate not issued by our CA",
    21: "certificate not issued by our CA",
    24: "invalid CA certificate",
    26: "certificate purpose (extendedKeyUsage) is not clientAuth",
}


class TlsError(Exception):
    """The TLS session failed (alert, protocol error); the key state is dead."""


class TlsGroupsError(ValueError):
    """A tls-groups list OpenSSL refuses (one line, naming the list)."""


@dataclass(frozen=True)
class TlsCredentials:
    """Own certificate and key, intermediates to send, and the CA(s) that peers must chain to."""

    certificate: x509.Certificate
    private_key: CertificateIssuerPrivateKeyTypes = field(repr=False)
    trust: tuple[x509.Certificate, ...]
    chain: tuple[x509.Certificate, ...] = ()


class TlsContext:
    """A configured ``SSL.Context`` shared by every engine of one role."""

    def __init__(self, credentials: TlsCredentials, *, server: bool,
                 groups: str = DEFAULT_TLS_GROUPS) -> None:
        self.server = server
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        _set_groups(ctx, groups)
        no_reneg: int = SSL.OP_NO_RENEGOTIATION  # type: ignore[attr-defined]
        ctx.set_options(SSL.OP_NO_TICKET | no_reneg | SSL.OP_NO_COMPRESSION)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        # ssl_openssl.c tls_ctx_set_options: an idle TLS session gives back its 16-34 KB
        # record buffers (most sessions sit idle between rare control messages).
        ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
        ctx.use_certificate(_modern(credentials.certificate))
        ctx.use_privatekey(_modern(credentials.private_key))
        for extra in credentials.chain:
            ctx.add_extra_chain_cert(_modern(extra))
        ctx.check_privatekey()
        store = ctx.get_cert_store()
        if store is None:  # pragma: no cover - OpenSSL always provides one
            raise TlsError("no certificate store")
        for anchor in credentials.trust:
            store.add_cert(crypto.X509.from_cryptography(anchor))
        if server:
            ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _record_verify)
        else:
            ctx.set_verify(SSL.VERIFY_PEER, _strict_verify)
        self.context = ctx


def _set_groups(ctx: SSL.Context, groups: str) -> None:
    """The key-exchange groups, in preference order (OpenSSL's SSL_CTX_set1_groups_list;
    pyOpenSSL wraps it only under its older name). Raises `TlsGroupsError` when OpenSSL
    knows none of them or rejects the list."""
    names = [name for name in groups.split(":") if name]
    if not names or len(names) != groups.count(":") + 1:
        raise TlsGroupsError(f"TLS groups {groups!r}: give group names separated by ':'")
    handle = ctx._context  # noqa: SLF001 (the SSL_CTX pyOpenSSL wraps)
    if _ssl_lib.SSL_CTX_set1_curves_list(handle, groups.encode("ascii", "replace")) != 1:
        _ssl_lib.ERR_clear_error()  # or a later, unrelated call would report it
        raise TlsGroupsError(
            f"TLS groups {groups!r}: this OpenSSL does not know one of these groups "
            f"(default {DEFAULT_TLS_GROUPS})"
        )


def checked_tls_groups(groups: str) -> str:
    """``groups`` when OpenSSL accepts the list, else `TlsGroupsError` (one line)."""
    groups = groups.strip()
    _set_groups(SSL.Context(SSL.TLS_METHOD), groups)
    return groups


def _modern(value: object) -> Any:
    """pyOpenSSL >= 24.3 takes cryptography objects; the installed stubs predate that."""
    return value


class _VerifyOutcome:
    """What the verify callback found for one engine (the callback only sees the connection)."""

    __slots__ = ("error",)

    def __init__(self) -> None:
        self.error: str | None = None


def _record_verify(
    conn: SSL.Connection, cert: crypto.X509, errnum: int, depth: int, ok: int
) -> bool:
    # Server role: keep the handshake going and remember the first problem, so the
    # session can refuse with AUTH_FAILED and a reason (ssl_verify_openssl.c logs it).
    outcome = conn.get_app_data()
    if not ok and isinstance(outcome, _VerifyOutcome) and outcome.error is None:
        outcome.error = _VERIFY_REASONS.get(errnum, f"certificate verify error {errnum}")
    return True


def _strict_verify(
    conn: SSL.Connection, cert: crypto.X509, errnum: int, depth: int, ok: int
) -> bool:
    return bool(ok)


def client_auth_problem(certificate: x509.Certificate) -> str | None:
    """Why a verified chain's leaf is still not a client certificate (remote-cert-tls client)."""
    try:
        eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return "certificate has no extendedKeyUsage clientAuth"
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        return "certificate extendedKeyUsage lacks clientAuth"
    return None


class TlsEngine:
    """One TLS session over memory BIOs; plaintext writes are queued until the handshake ends."""

    __slots__ = ("server", "_conn", "_pending", "handshake_done", "_verify", "closed")

    def __init__(self, context: TlsContext) -> None:
        self.server = context.server
        self._conn = SSL.Connection(context.context, None)
        self._verify = _VerifyOutcome()
        # The callback's view of this engine; no cycle back to us, so refcounting frees
        # the (large) SSL object as soon as the key state goes.
        self._conn.set_app_data(self._verify)
        if self.server:
            self._conn.set_accept_state()
        else:
            self._conn.set_connect_state()
        self._pending: list[bytes] = []
        self.handshake_done = False
        self.closed = False

    @property
    def verify_error(self) -> str | None:
        """The first chain problem OpenSSL reported (server role), or None."""
        return self._verify.error

    def receive(self, ciphertext: bytes) -> None:
        """Feed TLS bytes from the control channel (in message-id order)."""
        if ciphertext:
            self._conn.bio_write(ciphertext)

    def process(self) -> list[bytes]:
        """Advance the handshake and return any plaintext records that arrived."""
        if self.closed:
            return []
        records: list[bytes] = []
        try:
            if not self.handshake_done:
                self._conn.do_handshake()
                self.handshake_done = True
                self._flush()
            while True:
                records.append(self._conn.recv(READ_CHUNK))
        except SSL.WantReadError:
            pass
        except SSL.ZeroReturnError:
            self.closed = True
        except SSL.Error as exc:
            self.closed = True
            raise TlsError(_describe(exc)) from None
        return records

    def send(self, plaintext: bytes) -> None:
        """Queue one plaintext message; each becomes its own TLS record (forward.c)."""
        self._pending.append(plaintext)
        if self.handshake_done:
            self._flush()

    def _flush(self) -> None:
        try:
            for message in self._pending:
                self._conn.sendall(message)
        except SSL.Error as exc:
            self.closed = True
            raise TlsError(_describe(exc)) from None
        self._pending.clear()

    def outgoing(self) -> bytes:
        """Drain the TLS bytes that should go out on the control channel."""
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self._conn.bio_read(READ_CHUNK)
            except SSL.WantReadError:
                break
            chunks.append(chunk)
            if len(chunk) < READ_CHUNK:  # a memory BIO hands out all it has
                break
        return b"".join(chunks)

    def peer_certificate(self) -> x509.Certificate | None:
        """The peer's leaf as a new ``cryptography`` object (a parse: call it once)."""
        cert: x509.Certificate | None = _modern(self._conn).get_peer_certificate(
            as_cryptography=True
        )
        return cert

    def peer_chain(self) -> Sequence[x509.Certificate]:
        chain: list[x509.Certificate] | None = _modern(self._conn).get_peer_cert_chain(
            as_cryptography=True
        )
        return chain or []

    @property
    def version(self) -> str:
        return self._conn.get_protocol_version_name()

    @property
    def group(self) -> str | None:
        """The key-exchange group the handshake used (e.g. X25519MLKEM768), once done."""
        return self._conn.get_group_name() if self.handshake_done else None

    def export_keying_material(self, label: bytes, length: int) -> bytes:
        """RFC 5705 / RFC 8446 7.5 exporter without context (ssl_openssl.c, use_context=0)."""
        if not self.handshake_done:
            raise TlsError("keying material requested before the handshake finished")
        return bytes(self._conn.export_keying_material(label, length))


def _describe(exc: SSL.Error) -> str:
    details = [part for item in exc.args for part in (item if isinstance(item, list) else [item])]
    return "TLS error: " + "; ".join(str(detail) for detail in details)[:200]
