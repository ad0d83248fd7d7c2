"""The client-role OpenVPN session, for pair tests without sockets and the load generator.

It behaves like a 2.6 client in pull mode: hard reset (V3 with the wrapped client key
and the early-negotiation replay id for tls-crypt-v2), TLS as client once its reset was
ACKed (ssl.c S_PRE_START -> S_START), P_CONTROL_WKC_V1 as message id 1 when the server
asked for it, key-method 2 with peer-info, PUSH_REQUEST, and data keys derived once the
final PUSH_REPLY arrived (cipher, peer-id, key derivation, keepalive taken from it).
Same surface as the server session; ``renegotiate(now)`` starts a client-side soft reset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from sslvpn.net.buffer import Buffer, BufferReadError
from sslvpn.openvpn.constants import (
    EARLY_NEG_FLAG_RESEND_WKC,
    EARLY_NEG_START,
    PEER_ID_UNDEF,
    SESSION_ID_LEN,
    TLV_TYPE_EARLY_NEG_FLAGS,
    Opcode,
)
from sslvpn.openvpn.data_channel import Compression
from sslvpn.openvpn.endpoint import Endpoint, Rand, Timing, local_key_method
from sslvpn.openvpn.events import (
    ControlMessageReceived,
    ExitRequested,
    PeerRefused,
    SessionEstablished,
)
from sslvpn.openvpn.key_method import (
    KeyMethodError,
    occ_options_string,
    pull_key_method2,
    push_key_method2,
)
from sslvpn.openvpn.key_state import Identity, KeyState
from sslvpn.openvpn.packet import ControlPacket
from sslvpn.openvpn.push import CONTINUATION_LAST, CONTINUATION_MORE, KeyDerivation
from sslvpn.openvpn.tls import TlsContext
from sslvpn.openvpn.tls_wrap import ControlCodec, ControlWrap

#: What a stock Debian 2.6.14 client sends (openvpn-lab server log).
DEFAULT_PEER_INFO = (
    "IV_VER=2.6.14\nIV_PLAT=linux\nIV_TCPNL=1\nIV_MTU=1600\nIV_NCP=2\n"
    "IV_CIPHERS=AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305\nIV_PROTO=990\n"
    "IV_LZO_STUB=1\nIV_COMP_STUB=1\nIV_COMP_STUBv2=1\n"
)


@dataclass(frozen=True)
class ClientConfig:
    """A client profile reduced to what the protocol needs."""

    tls: TlsContext
    codec: ControlCodec = field(repr=False)
    wkc: bytes | None = field(default=None, repr=False)  # tls-crypt-v2 wrapped client key
    early_negotiation: bool = True
    peer_info: str = DEFAULT_PEER_INFO
    options: str | None = None  # OCC string to send; None: what a stock 2.6 client sends
    tcp: bool = False
    username: str = ""
    password: str = field(default="", repr=False)
    timing: Timing = Timing(reneg_seconds=None)


def _wants_wkc_resend(payload: bytes) -> bool:
    """Early-negotiation TLVs in the server's reset (ssl.c parse_early_negotiation_tlvs)."""
    buf = Buffer(payload)
    try:
        while not buf.eof():
            kind, length = buf.pull_uint16(), buf.pull_uint16()
            value = buf.pull_bytes(length)
            if kind == TLV_TYPE_EARLY_NEG_FLAGS and length == 2:
                return bool(int.from_bytes(value, "big") & EARLY_NEG_FLAG_RESEND_WKC)
    except BufferReadError:
        return False
    return False


class ClientSession(Endpoint):
    """One connection to a server, client role."""

    def __init__(self, config: ClientConfig, now: float, *, rand: Rand = os.urandom) -> None:
        own = rand(SESSION_ID_LEN)
        own = own if any(own) else b"\x01" + own[1:]
        v2 = config.wkc is not None
        first_id = EARLY_NEG_START if v2 and config.early_negotiation else 0
        wrap = ControlWrap(config.codec, timestamp=int(now), last_packet_id=first_id)
        super().__init__(
            tls_context=config.tls, wrap=wrap, identity=Identity(own, None),
            timing=config.timing, now=now, rand=rand,
        )
        self.config = config
        self.wkc = config.wkc
        self._resend_wkc = False
        self._cc_exit = False
        self._push_parts: list[str] = []
        self.pushed_options: list[str] = []
        self.auth_failed: str | None = None
        self.server_options = ""  # the server's OCC string, as a client would compare it
        ks = self._new_key_state(0, now)
        ks.sender.queue(
            Opcode.CONTROL_HARD_RESET_CLIENT_V3 if v2 else Opcode.CONTROL_HARD_RESET_CLIENT_V2
        )

    def __repr__(self) -> str:
        return f"ClientSession(sid={self.identity.own.hex()}, closed={self.closed})"

    # -- reset and TLS start -------------------------------------------------------------
    def _before_receive(self, ks: KeyState, packet: ControlPacket, now: float) -> bool:
        if self.identity.peer is not None:
            return True
        if packet.opcode is not Opcode.CONTROL_HARD_RESET_SERVER_V2 or packet.key_id != 0:
            self._drop("no-server-reset-yet")
            return False
        self.identity = Identity(self.identity.own, packet.session_id)
        self._resend_wkc = self.wkc is not None and _wants_wkc_resend(packet.payload)
        return True

    def _before_pump(self, ks: KeyState) -> None:
        if ks.tls_running or self.identity.peer is None or not ks.sender.all_acked():
            return
        ks.tls_running = True
        if ks.key_id == 0 and self._resend_wkc:
            ks.sender.queue(Opcode.CONTROL_WKC_V1)  # message id 1 carries the WKc again
        ks.local_km2 = local_key_method(
            self._rand,
            self.config.options or occ_options_string(server=False, tcp=self.config.tcp),
            client=True,
            peer_info=self.config.peer_info,
            username=self.config.username,
            password=self.config.password,
        )
        ks.send_record(push_key_method2(ks.local_km2))

    def _on_key_method(self, ks: KeyState, record: bytes, now: float) -> None:
        try:
            ks.peer_km2 = pull_key_method2(record, from_client=False)
        except KeyMethodError:
            self._drop("key-method")
            self._key_failed(ks, "bad key-method 2 record from server")
            return
        ks.km2_received()
        if ks.key_id == 0 and self._send_key is None:
            self.server_options = ks.peer_km2.options
            self._ask_for_push(ks, now)
        else:
            self._install(ks, now)

    def _ask_for_push(self, ks: KeyState, now: float) -> None:
        """The server's key-method 2 record is in: pull the configuration at once (pair
        tests override this to model clients that ask later and again)."""
        ks.send_message("PUSH_REQUEST")

    # -- control messages ----------------------------------------------------------------
    def _on_message(self, ks: KeyState, message: str, now: float) -> None:
        if message.startswith("PUSH_REPLY,"):
            self._on_push_reply(ks, message[len("PUSH_REPLY,") :], now)
        elif message.startswith("AUTH_FAILED"):
            self.auth_failed = message.partition(",")[2]
            self._events.append(PeerRefused(self.auth_failed))
            self._finish("AUTH_FAILED " + self.auth_failed)
        elif message.split(",")[0] in ("RESTART", "HALT"):
            self._finish("server sent " + message)
        elif message == "EXIT":
            self._events.append(ExitRequested("control"))
            self._finish("peer exited (EXIT)")
        else:
            self._events.append(ControlMessageReceived(message))

    def _on_push_reply(self, ks: KeyState, body: str, now: float) -> None:
        if self._send_key is not None:
            return  # renegotiations never push again
        final = not body.endswith(CONTINUATION_MORE)
        for suffix in (CONTINUATION_MORE, CONTINUATION_LAST):
            body = body.removesuffix(suffix)
        self._push_parts += [option for option in body.split(",") if option]
        if not final:
            return
        self.pushed_options, self._push_parts = self._push_parts, []
        for option in self.pushed_options:
            self._apply_option(option)
        if not self.cipher:
            self._finish("server pushed no cipher")
            return
        self._install(ks, now)
        self.last_received = now
        self._events.append(
            SessionEstablished(
                cipher=self.cipher,
                key_derivation=self.derivation.value,
                peer_id=PEER_ID_UNDEF if self.data_peer_id is None else self.data_peer_id,
                tls_version=ks.tls.version,
                tls_group=ks.tls.group,
            )
        )

    def _apply_option(self, option: str) -> None:
        name, _, value = option.partition(" ")
        words = value.split()
        if name == "cipher":
            self.cipher = value
        elif name == "peer-id" and value.isdigit():
            self.data_peer_id = int(value)
        elif name == "protocol-flags":
            self._cc_exit = "cc-exit" in words
            if "tls-ekm" in words:
                self.derivation = KeyDerivation.TLS_EKM
        elif name == "key-derivation" and value == "tls-ekm":
            self.derivation = KeyDerivation.TLS_EKM
        elif name == "ping" and value.isdigit():
            self.ping_interval = float(value)
        elif name == "ping-restart" and value.isdigit():
            self.ping_timeout = float(value)
        elif option == "compress stub-v2":
            self.compression = Compression.STUB_V2
        elif option == "comp-lzo no":
            self.compression = Compression.LZO_STUB

    def _say_goodbye(self) -> None:
        ks = self._send_key
        if self._cc_exit and ks is not None:
            ks.send_message("EXIT")
        else:
            self._send_occ_exit()
