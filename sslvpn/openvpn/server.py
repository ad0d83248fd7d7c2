"""The stateless acceptor: what a server does with a datagram before any session exists.

For UDP it copies OpenVPN 2.6's HMAC cookie (ssl_pkt.c calculate_session_id_hmac,
mudp.c do_pre_decrypt_check): a verified HARD_RESET_CLIENT gets a HARD_RESET_SERVER_V2
whose session id is ``HMAC-SHA256(K, time slot || address || client sid)[:8]``, and only
a later packet that ACKs that cookie creates a session, so spoofed sources cost nothing.
UDP resets are rate limited so the server is no reflection amplifier (2.6
``connect-freq-initial``); TCP resets are not (the transport proved the address, and the
listener admits connections by source, see ``sslvpn.runtime.admission``), so a TCP client
gets its session straight from the reset. A tls-crypt-v2 client without early negotiation
(OpenVPN before 2.6) cannot do the cookie exchange: with ``force_cookie`` (the default, 2.6
``tls-crypt-v2 ... force-cookie``) its UDP reset is refused; without it the session is made
from the reset, and it answers only what reaches it until the address answered
(``ServerSession``), so a forged source gets one packet per packet, never retransmissions.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from sslvpn.net.buffer import Buffer
from sslvpn.openvpn.constants import (
    EARLY_NEG_FLAG_RESEND_WKC,
    HAND_WINDOW,
    HARD_RESET_OPCODES,
    SESSION_ID_LEN,
    TLS_CRYPT_V2_MAX_WKC_LEN,
    TLS_MTU,
    TLV_TYPE_EARLY_NEG_FLAGS,
    Opcode,
)
from sslvpn.openvpn.packet import ControlPacket
from sslvpn.openvpn.tls_wrap import (
    ControlCodec,
    FirstPacket,
    FirstPacketDropped,
    HmacKey,
    ServerWrapKeys,
    check_first_packet,
)

COOKIE_SLOT_OFFSETS = (0, -1, -2, 1)  # mudp.c: accept cookies of neighbouring time slots
RESET_RATE = 100  # connect-freq-initial default: replies per RESET_PERIOD
RESET_PERIOD = 10.0
#: Drop reason of a UDP tls-crypt-v2 reset without early negotiation under force-cookie.
NO_COOKIE_SUPPORT = "no-cookie-support"
FIRST_REPLY_PACKET_ID = 1  # the stateless reply's tls-wrap replay id (ssl_pkt.c)
#: Largest first packet we look at: a tls-mtu sized control packet plus the biggest WKc
#: (2.6 drops "Incoming control channel packet too big" beyond its buffers, mtu.h).
MAX_FIRST_PACKET = TLS_MTU + TLS_CRYPT_V2_MAX_WKC_LEN


@dataclass(frozen=True)
class AcceptorConfig:
    """How this listener protects its control channel and which transport it serves."""

    wrap: ServerWrapKeys
    tcp: bool = False
    hand_window: float = HAND_WINDOW
    reset_rate: int = RESET_RATE
    reset_period: float = RESET_PERIOD
    force_cookie: bool = True  # refuse UDP tls-crypt-v2 resets that cannot do the cookie


@dataclass(frozen=True)
class Reply:
    """Send these bytes back to the address; nothing was remembered."""

    data: bytes


@dataclass(frozen=True)
class CreateSession:
    """Build a ``ServerSession`` from this: the peer proved its key (and, in UDP, its address).

    ``first`` is the packet to process first: the client's hard reset when ``reset_done``
    is False (the session must send its own reset), else the client's message id 1 (or a
    bare ACK) after the cookie exchange, with our reset counted as sent and acknowledged.
    """

    client_session_id: bytes
    server_session_id: bytes
    codec: ControlCodec = field(repr=False)
    first: ControlPacket = field(repr=False)
    reset_done: bool
    timestamp: int
    last_packet_id: int
    first_replay_id: tuple[int, int]
    metadata: bytes | None = None
    early_negotiation: bool = False


@dataclass(frozen=True)
class Dropped:
    """Ignore the datagram; ``reason`` is a stable token for counters."""

    reason: str


Decision = Reply | CreateSession | Dropped


class _TokenBucket:
    def __init__(self, rate: int, period: float) -> None:
        self._capacity = float(rate)
        self._per_second = rate / period
        self._tokens = float(rate)
        self._last: float | None = None

    def take(self, now: float) -> bool:
        if self._last is not None:
            elapsed = max(0.0, now - self._last)
            self._tokens = min(self._capacity, self._tokens + elapsed * self._per_second)
        self._last = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


def starts_new_session(data: bytes, peer_session_id: bytes) -> bool:
    """A client hard reset with another session id: the peer reconnects (e.g. after a
    restart) from an address that still has a session; feed it to the acceptor."""
    if len(data) < 1 + SESSION_ID_LEN or data[0] & 0x07:
        return False
    opcode = data[0] >> 3
    client_resets = (Opcode.CONTROL_HARD_RESET_CLIENT_V2, Opcode.CONTROL_HARD_RESET_CLIENT_V3)
    return opcode in client_resets and data[1 : 1 + SESSION_ID_LEN] != peer_session_id


def early_negotiation_tlvs() -> bytes:
    """Payload of our reset to an early-negotiating tls-crypt-v2 client (ssl_pkt.c)."""
    buf = Buffer()
    buf.push_uint16(TLV_TYPE_EARLY_NEG_FLAGS)
    buf.push_uint16(2)
    buf.push_uint16(EARLY_NEG_FLAG_RESEND_WKC)
    return buf.getvalue()


class ServerAcceptor:
    """Decides, per datagram from an unknown address, between reply, create and drop."""

    def __init__(
        self, config: AcceptorConfig, *, rand: Callable[[int], bytes] = os.urandom
    ) -> None:
        self.config = config
        self._rand = rand
        self._cookie_key = HmacKey(rand(32), "sha256")
        self._slot_length = (config.hand_window + 1) / 2
        self._resets = _TokenBucket(config.reset_rate, config.reset_period)

    def __repr__(self) -> str:
        return f"ServerAcceptor(tcp={self.config.tcp}, wrap={self.config.wrap.mode})"

    def cookie(self, address: object, client_sid: bytes, now: float, offset: int = 0) -> bytes:
        """The server session id a stateless reply uses for this client at this time."""
        slot = int(now // self._slot_length) + offset
        message = slot.to_bytes(8, "big", signed=True) + repr(address).encode() + client_sid
        digest = self._cookie_key.digest(message)[:SESSION_ID_LEN]
        return digest if any(digest) else b"\x01" + digest[1:]

    def receive(self, data: bytes, address: object, now: float) -> Decision:
        """Judge one datagram (or TCP frame) from a peer that has no session yet."""
        if len(data) > MAX_FIRST_PACKET:
            return Dropped("too-big")
        checked = check_first_packet(self.config.wrap, data)
        if isinstance(checked, FirstPacketDropped):
            return Dropped(checked.reason)
        packet = checked.packet
        if packet.key_id != 0:
            return Dropped("bad-key-id")
        if packet.opcode in HARD_RESET_OPCODES:
            if packet.opcode is Opcode.CONTROL_HARD_RESET_SERVER_V2:
                return Dropped("bad-opcode")
            if packet.message_id != 0 or packet.acks:
                return Dropped("bad-reset")  # 2.7 ignores resets with message id != 0
            if self.config.tcp:
                return self._create(checked, self._random_session_id(), False, now, 0)
            legacy_v2 = checked.metadata is not None and not checked.early_negotiation
            if legacy_v2 and self.config.force_cookie:
                return Dropped(NO_COOKIE_SUPPORT)
            if not self._resets.take(now):
                return Dropped("rate-limited")
            if legacy_v2:
                return self._create(checked, self._random_session_id(), False, now, 0)
            return Reply(self._reply(checked, address, now))
        if self.config.tcp:
            return Dropped("no-session")
        return self._from_cookie(checked, address, now)

    @staticmethod
    def _create(
        checked: FirstPacket, sid: bytes, reset_done: bool, now: float, last_packet_id: int
    ) -> CreateSession:
        opened = checked.opened
        return CreateSession(
            client_session_id=opened.packet.session_id,
            server_session_id=sid,
            codec=checked.codec,
            first=opened.packet,
            reset_done=reset_done,
            timestamp=int(now),
            last_packet_id=last_packet_id,
            first_replay_id=(opened.packet_id, opened.timestamp),
            metadata=checked.metadata,
            early_negotiation=checked.early_negotiation,
        )

    def _reply(self, checked: FirstPacket, address: object, now: float) -> bytes:
        reset = checked.packet
        early = checked.early_negotiation
        reply = ControlPacket(
            Opcode.CONTROL_HARD_RESET_SERVER_V2,
            0,
            self.cookie(address, reset.session_id, now),
            acks=(0,),
            remote_session_id=reset.session_id,
            message_id=0,
            payload=early_negotiation_tlvs() if early else b"",
        )
        return checked.codec.seal(reply, FIRST_REPLY_PACKET_ID, int(now))

    def _from_cookie(self, checked: FirstPacket, address: object, now: float) -> Decision:
        packet = checked.packet
        if not packet.acks or packet.remote_session_id is None:
            return Dropped("no-session")
        if packet.message_id not in (None, 1):
            return Dropped("bad-message-id")
        if packet.opcode not in (Opcode.CONTROL_V1, Opcode.ACK_V1, Opcode.CONTROL_WKC_V1):
            return Dropped("bad-opcode")
        for offset in COOKIE_SLOT_OFFSETS:
            expected = self.cookie(address, packet.session_id, now, offset)
            if hmac.compare_digest(expected, packet.remote_session_id):
                return self._create(checked, expected, True, now, FIRST_REPLY_PACKET_ID)
        return Dropped("bad-cookie")

    def _random_session_id(self) -> bytes:
        sid = self._rand(SESSION_ID_LEN)
        return sid if any(sid) else b"\x01" + sid[1:]
