"""One key state: the TLS session, control-channel reliability and data keys of one key_id.

OpenVPN runs a fresh TLS session per key_id (ssl.c key_state_init); its reliable message
ids start at 0 with the (soft) reset. This module owns that per-key bookkeeping: feeding
in-order control payloads into TLS, cutting TLS output into control messages, splitting
the plaintext stream into the key-method 2 record and NUL-terminated text messages, and
building the (unwrapped) control packets to transmit. Sessions own everything shared.
Thousands of key states sit idle at once, so the class has slots and holds nothing it
does not need after the handshake (``forget_handshake``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sslvpn.openvpn.constants import (
    CONTROL_SEND_ACK_MAX,
    KEY_ID_COUNT,
    RELIABLE_ACK_SEND_MAX,
    WKC_OPCODES,
    Opcode,
)
from sslvpn.openvpn.data_channel import DataChannelKey
from sslvpn.openvpn.key_method import KeyMethod2
from sslvpn.openvpn.packet import ControlPacket
from sslvpn.openvpn.reliable import Message, ReceiveVerdict, ReliableReceiver, ReliableSender
from sslvpn.openvpn.tls import TlsEngine

MAX_TEXT_MESSAGE = 2048  # common.h TLS_CHANNEL_BUF_SIZE: a 2.6 peer reads at most this
_TLS_OPCODES = frozenset({Opcode.CONTROL_V1, Opcode.CONTROL_WKC_V1})


def next_key_id(key_id: int) -> int:
    """0,1,...,7,1,2,...: zero is skipped on wrap (ssl.c key_state_init)."""
    return 1 + key_id % (KEY_ID_COUNT - 1)


@dataclass(frozen=True)
class Identity:
    """Both session ids of the connection (they survive renegotiations)."""

    own: bytes
    peer: bytes | None


class KeyState:
    """Control channel and (once derived) data keys for one key_id."""

    __slots__ = (
        "key_id", "tls", "sender", "receiver", "started", "serial", "deadline", "max_payload",
        "tls_running", "records", "messages", "peer_km2_seen", "local_km2", "peer_km2",
        "crypto", "installed_at", "expires", "_text",
    )

    def __init__(
        self, key_id: int, tls: TlsEngine, now: float, hand_window: float, max_payload: int
    ) -> None:
        self.key_id = key_id
        self.tls = tls
        self.sender = ReliableSender()
        self.receiver = ReliableReceiver()
        self.started = now
        self.serial = 0
        self.deadline = now + hand_window
        self.max_payload = max_payload
        self.tls_running = tls.server  # a client starts TLS once its reset is ACKed
        self.records: list[bytes] = []  # plaintext before the key-method 2 record was read
        self.messages: list[str] = []  # complete text messages not yet handled
        self.peer_km2_seen = False
        self.local_km2: KeyMethod2 | None = None
        self.peer_km2: KeyMethod2 | None = None
        self.crypto: DataChannelKey | None = None
        self.installed_at: float | None = None
        self.expires: float | None = None
        self._text = b""  # an unfinished text message

    def __repr__(self) -> str:
        return f"KeyState(key_id={self.key_id}, installed={self.installed_at is not None})"

    # -- inbound -------------------------------------------------------------------------
    def receive(self, packet: ControlPacket, now: float) -> ReceiveVerdict | None:
        """ACK bookkeeping and in-order delivery of TLS payloads; None for a bare ACK."""
        if packet.acks:
            self.sender.process_acks(packet.acks, now)
        if packet.message_id is None:
            return None
        verdict = self.receiver.receive(Message(packet.message_id, packet.opcode, packet.payload))
        for message in self.receiver.pop_ready():
            if message.opcode in _TLS_OPCODES and message.payload:
                self.tls.receive(message.payload)
        return verdict

    def pump(self) -> None:
        """Advance TLS (raises ``TlsError``), queue its output, sort plaintext records."""
        if not self.tls_running:
            return
        for record in self.tls.process():
            if not self.peer_km2_seen:
                self.records.append(record)
            else:
                self._add_text(record)
        self._queue_tls_output()

    def km2_received(self) -> None:
        """The first record was the key-method 2 record; later records are text messages."""
        self.peer_km2_seen = True
        records, self.records = self.records, []
        for record in records:
            self._add_text(record)

    def forget_handshake(self) -> None:
        """Keys are derived: drop the key-method 2 records (randoms, password) for good."""
        self.local_km2 = self.peer_km2 = None

    def _add_text(self, record: bytes) -> None:
        *complete, rest = (self._text + record).split(b"\0")
        self._text = rest[:MAX_TEXT_MESSAGE]
        for raw in complete:
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            if text and text.isprintable():
                self.messages.append(text)

    # -- outbound ------------------------------------------------------------------------
    def send_record(self, record: bytes) -> None:
        """One TLS record (key-method 2 or one NUL-terminated message)."""
        self.tls.send(record)
        self._queue_tls_output()

    def send_message(self, text: str) -> None:
        self.send_record(text.encode() + b"\0")

    def _queue_tls_output(self) -> None:
        data = self.tls.outgoing()
        for start in range(0, len(data), self.max_payload):
            self.sender.queue(Opcode.CONTROL_V1, data[start : start + self.max_payload])

    def control_packets(
        self, identity: Identity, now: float, wkc: bytes | None = None
    ) -> list[ControlPacket]:
        """Due reliable messages with piggy-backed ACKs, then bare ACKs for the rest."""
        out: list[ControlPacket] = []
        peer = identity.peer
        for message in self.sender.due(now):
            acks = self.receiver.take_acks(CONTROL_SEND_ACK_MAX) if peer else ()
            out.append(
                ControlPacket(
                    message.opcode,
                    self.key_id,
                    identity.own,
                    acks,
                    peer if acks else None,
                    message.message_id,
                    message.payload,
                    wkc if message.opcode in WKC_OPCODES else None,
                )
            )
        while peer and self.receiver.has_acks():
            acks = self.receiver.take_acks(RELIABLE_ACK_SEND_MAX)
            out.append(ControlPacket(Opcode.ACK_V1, self.key_id, identity.own, acks, peer))
        return out

    def get_timer(self) -> float | None:
        return self.sender.get_timer()
