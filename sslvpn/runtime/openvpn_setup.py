"""Builds the OpenVPN server pieces from the data folder: TLS context, wrap keys, acceptor.

A gateway serves tls-crypt and tls-crypt-v2 clients on the same port: the first packet's
opcode says which (tls-crypt-v2 clients start with HARD_RESET_CLIENT_V3 or send
P_CONTROL_WKC_V1), so one acceptor per mode sits behind a small dispatcher. Which of the
two the issued profiles use is the stored ``control_channel`` setting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sslvpn import keyfiles
from sslvpn.config import DataPaths
from sslvpn.openvpn.constants import Opcode
from sslvpn.openvpn.endpoint import Timing
from sslvpn.openvpn.server import (
    RESET_PERIOD,
    RESET_RATE,
    AcceptorConfig,
    CreateSession,
    Decision,
    ServerAcceptor,
)
from sslvpn.openvpn.session import ServerConfig, ServerSession
from sslvpn.openvpn.tls import TlsContext, TlsCredentials
from sslvpn.openvpn.tls_wrap import ServerWrapKeys
from sslvpn.runtime.driver import SessionCore
from sslvpn.store.models import GatewaySettings

V2_OPCODES = frozenset({Opcode.CONTROL_HARD_RESET_CLIENT_V3, Opcode.CONTROL_WKC_V1})


@dataclass(frozen=True)
class OpenVpnCredentials:
    """Key material read once at start: TLS identity and trust, control-channel keys."""

    tls: TlsContext = field(repr=False)
    tls_crypt: ServerWrapKeys | None = field(repr=False)
    tls_crypt_v2: ServerWrapKeys | None = field(repr=False)

    @classmethod
    def load(cls, paths: DataPaths, settings: GatewaySettings) -> OpenVpnCredentials:
        """Read the CA, server certificate and key, and the control-channel keys: the one
        the settings' profiles use must be there, the other is served when present.
        A missing or garbled file raises `DataFileError` naming it."""
        ca = keyfiles.read_certificate(paths.ca_cert, keyfiles.CA_CERT)
        cert = keyfiles.read_certificate(paths.server_cert, keyfiles.SERVER_CERT)
        key = keyfiles.read_private_key(paths.server_key, keyfiles.SERVER_KEY)
        keyfiles.check_pair(paths.server_cert, cert, paths.server_key, key, keyfiles.SERVER_KEY)
        tls = TlsContext(TlsCredentials(certificate=cert, private_key=key, trust=(ca,)),
                         server=True, groups=settings.tls_groups)
        load_tc, load_v2 = keyfiles.wrap_keys_loaded(paths, settings.control_channel)
        tc = v2 = None
        if load_tc:
            tc = ServerWrapKeys.tls_crypt(
                keyfiles.read_static_key(paths.tls_crypt_key, keyfiles.TLS_CRYPT))
        if load_v2:
            v2 = ServerWrapKeys.tls_crypt_v2(keyfiles.read_tls_crypt_v2_server_key(
                paths.tls_crypt_v2_server_key, keyfiles.TLS_CRYPT_V2))
        return cls(tls=tls, tls_crypt=tc, tls_crypt_v2=v2)


class ControlChannelAcceptor:
    """Routes a first packet to the tls-crypt or the tls-crypt-v2 acceptor by its opcode."""

    def __init__(self, v1: ServerAcceptor | None, v2: ServerAcceptor | None) -> None:
        self._v1 = v1
        self._v2 = v2

    def receive(self, data: bytes, address: object, now: float) -> Decision:
        acceptor = self._v2 if data and (data[0] >> 3) in V2_OPCODES else self._v1
        if acceptor is None:
            acceptor = self._v1 or self._v2
        assert acceptor is not None  # noqa: S101 (load() guarantees one)
        return acceptor.receive(data, address, now)


def build_acceptor(
    credentials: OpenVpnCredentials, *, tcp: bool, connect_freq: tuple[int, float] | None = None,
    force_cookie: bool = True,
) -> ControlChannelAcceptor:
    """The stateless first-packet gate for one listener.

    ``connect_freq`` is OpenVPN's ``connect-freq-initial``: at most N replies to new UDP
    clients per so many seconds (None: the acceptor's default, 100 per 10 s).
    ``force_cookie`` refuses UDP tls-crypt-v2 clients that cannot do the cookie exchange.
    """
    rate, period = connect_freq or (RESET_RATE, RESET_PERIOD)

    def one(keys: ServerWrapKeys | None) -> ServerAcceptor | None:
        if keys is None:
            return None
        return ServerAcceptor(AcceptorConfig(wrap=keys, tcp=tcp, reset_rate=rate,
                                             reset_period=period, force_cookie=force_cookie))

    return ControlChannelAcceptor(one(credentials.tls_crypt), one(credentials.tls_crypt_v2))


def build_openvpn(
    credentials: OpenVpnCredentials,
    settings: GatewaySettings,
    *,
    tcp: bool,
    connect_freq: tuple[int, float] | None = None,
) -> tuple[ControlChannelAcceptor, Callable[[CreateSession, float], SessionCore]]:
    """The acceptor and the session factory of one listener (UDP or TCP)."""
    config = ServerConfig(
        tls=credentials.tls, tcp=tcp, timing=Timing(reneg_seconds=float(settings.reneg_sec))
    )

    def create(created: CreateSession, now: float) -> SessionCore:
        return ServerSession(config, created, now)

    acceptor = build_acceptor(credentials, tcp=tcp, connect_freq=connect_freq,
                              force_cookie=settings.tls_crypt_v2_force_cookie)
    return acceptor, create
