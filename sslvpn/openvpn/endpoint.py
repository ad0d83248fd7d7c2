"""What the server and client sessions share: key states, data channel, keepalive, outputs.

An ``Endpoint`` owns the control-channel wrap state (tls-crypt replay ids), the key
states by key_id, the choice of the key we send with, the lame-duck keys we still accept,
keepalive (ping.c: send a ping after ``ping`` quiet seconds; close after ``ping-restart``
silent ones), renegotiation mechanics (ssl.c key_state_soft_reset: a new TLS session on
the next key_id behind a P_CONTROL_SOFT_RESET_V1) and the sans-I/O outputs. The roles
(``session.ServerSession``, ``client.ClientSession``) add what happens with key-method 2
records and control messages. Peer garbage is counted in ``drops`` and reported as
``PacketDropped``; it never raises.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from sslvpn.openvpn.constants import (
    CONTROL_SEND_ACK_MAX,
    EKM_LABEL_DATA_KEYS,
    HAND_WINDOW,
    KEY_EXPANSION_LEN,
    PING_MAGIC,
    TLS_MTU,
    OccOpcode,
    Opcode,
)
from sslvpn.openvpn.data_channel import (
    OCC_EXIT_PAYLOAD,
    Compression,
    DataChannelKey,
    DataDropped,
    PacketIdExhausted,
    is_ping,
    occ_opcode,
)
from sslvpn.openvpn.events import (
    Event,
    ExitRequested,
    KeysRenegotiated,
    PacketDropped,
    SessionClosed,
    TunnelPacket,
)
from sslvpn.openvpn.key_method import KeyMethod2
from sslvpn.openvpn.key_state import Identity, KeyState, next_key_id
from sslvpn.openvpn.keys import DataKeys, KeySource, ekm_key_expansion, prf_key_expansion
from sslvpn.openvpn.packet import ControlPacket
from sslvpn.openvpn.push import KeyDerivation
from sslvpn.openvpn.reliable import ReceiveVerdict
from sslvpn.openvpn.tls import TlsContext, TlsEngine, TlsError
from sslvpn.openvpn.tls_wrap import ControlWrap, UnwrapError

LAME_DUCK_SECONDS = 90.0  # OpenVPN Connect keeps sending on the old key ~60 s (ref. s.14)
RENEG_SECONDS = 3600.0  # options.c renegotiate_seconds default
LINGER_SECONDS = 5.0  # push.c: keep a refused/exiting session ~5 s to finish ACKs
_IPV6_UDP_HEADERS = 48  # ssl.c calc_control_channel_frame_overhead assumes IPv6 + UDP
_CONTROL_HEADER = 1 + 8 + 1 + 4 * CONTROL_SEND_ACK_MAX + 8 + 4
Rand = Callable[[int], bytes]
_DATA_OPCODES = frozenset((int(Opcode.DATA_V1), int(Opcode.DATA_V2)))


class LocalProtocolError(Exception):
    """The caller used the session wrongly (e.g. ``accept`` twice); never peer-caused."""


@dataclass(frozen=True)
class Timing:
    """Protocol timers in seconds (OpenVPN defaults unless noted)."""

    hand_window: float = HAND_WINDOW
    reneg_seconds: float | None = RENEG_SECONDS
    lame_duck_seconds: float = LAME_DUCK_SECONDS
    linger_seconds: float = LINGER_SECONDS


class Endpoint:
    """The shared machinery of one OpenVPN connection, either role."""

    __slots__ = (
        "server", "_tls_context", "wrap", "identity", "timing", "_rand", "_now", "_keys",
        "_serial", "_send_key", "_out", "_events", "drops", "closed", "_close_at",
        "_close_reason", "last_received", "last_sent", "ping_interval", "ping_timeout",
        "cipher", "derivation", "compression", "data_peer_id", "wkc", "_max_payload",
    )

    def __init__(
        self,
        *,
        tls_context: TlsContext,
        wrap: ControlWrap,
        identity: Identity,
        timing: Timing,
        now: float,
        rand: Rand = os.urandom,
    ) -> None:
        self.server = tls_context.server
        self._tls_context = tls_context
        self.wrap = wrap
        self.identity = identity
        self.timing = timing
        self._rand = rand
        self._now = now
        self._keys: dict[int, KeyState] = {}
        self._serial = 0
        self._send_key: KeyState | None = None
        self._out: list[bytes] = []
        self._events: list[Event] = []
        self.drops: Counter[str] = Counter()
        self.closed = False
        self._close_at: float | None = None
        self._close_reason = ""
        self.last_received = now
        self.last_sent = now
        self.ping_interval: float | None = None
        self.ping_timeout: float | None = None
        self.cipher = ""
        self.derivation = KeyDerivation.PRF
        self.compression = Compression.NONE
        self.data_peer_id: int | None = None  # None: we send P_DATA_V1
        self.wkc: bytes | None = None
        self._max_payload = TLS_MTU - _IPV6_UDP_HEADERS - wrap.codec.overhead - _CONTROL_HEADER

    # -- key states ----------------------------------------------------------------------
    def _new_key_state(self, key_id: int, now: float) -> KeyState:
        ks = KeyState(
            key_id, TlsEngine(self._tls_context), now, self.timing.hand_window, self._max_payload
        )
        self._serial += 1
        ks.serial = self._serial  # creation order; timestamps can tie
        self._keys[key_id] = ks  # a reused key_id evicts its old lame duck
        return ks

    @property
    def established(self) -> bool:
        """Data keys are installed (after accept/PUSH_REPLY) and the session is open."""
        return self._send_key is not None and not self.closed and self._close_at is None

    @property
    def key_ids(self) -> list[int]:
        """Live key states, oldest first (lame ducks, the send key, a negotiating one)."""
        return [ks.key_id for ks in sorted(self._keys.values(), key=lambda ks: ks.serial)]

    @property
    def installed_key_ids(self) -> list[int]:
        """Key states that have data keys, oldest first."""
        return [ks.key_id for ks in sorted(self._keys.values(), key=lambda ks: ks.serial)
                if ks.crypto is not None]

    def _latest_key(self) -> KeyState | None:
        return max(self._keys.values(), key=lambda ks: ks.serial, default=None)

    def _negotiating(self) -> KeyState | None:
        latest = self._latest_key()
        return latest if latest is not None and latest.crypto is None else None

    def renegotiate(self, now: float) -> bool:
        """Start a soft reset on the next key_id; False when one is already running."""
        self._now = now
        current = self._send_key
        if self.closed or current is None or self._negotiating() is not None:
            return False
        ks = self._new_key_state(next_key_id(self._latest_key_id()), now)
        ks.sender.queue(Opcode.CONTROL_SOFT_RESET_V1)
        return True

    def _latest_key_id(self) -> int:
        latest = self._latest_key()
        return 0 if latest is None else latest.key_id

    def _derive(self, ks: KeyState) -> DataKeys:
        """key2 by EKM or PRF for this key state, sliced for our role."""
        if self.derivation is KeyDerivation.TLS_EKM:
            label = EKM_LABEL_DATA_KEYS.encode()
            key2 = ekm_key_expansion(ks.tls.export_keying_material(label, KEY_EXPANSION_LEN))
        else:
            local, peer = ks.local_km2, ks.peer_km2
            if local is None or peer is None:
                raise LocalProtocolError("PRF needs both key-method 2 records")
            client, server = (peer, local) if self.server else (local, peer)
            assert client.pre_master is not None  # noqa: S101 - pulled as a client record
            source = KeySource(
                client.pre_master, client.random1, client.random2, server.random1, server.random2
            )
            own, other = self.identity.own, self.identity.peer or b""
            sids = (other, own) if self.server else (own, other)
            key2 = prf_key_expansion(source, *sids)
        return DataKeys.from_key2(key2, self.cipher, server=self.server)

    def _install(self, ks: KeyState, now: float) -> None:
        """Derive and install data keys; the first key becomes the send key at once."""
        ks.crypto = DataChannelKey(
            self._derive(ks), ks.key_id, peer_id=self.data_peer_id, compression=self.compression
        )
        ks.installed_at = now
        ks.forget_handshake()
        if self._send_key is None:
            self._send_key = ks

    def _switch_send_key(self, ks: KeyState, now: float) -> None:
        old = self._send_key
        if old is ks or ks.crypto is None:
            return
        self._send_key = ks
        if old is not None:
            old.expires = now + self.timing.lame_duck_seconds
        self._events.append(KeysRenegotiated(ks.key_id))

    def _maybe_switch(self, now: float) -> None:
        # Switch once the peer holds our key-method 2 record (all our messages ACKed):
        # it derived the same keys by then (ssl.c tls_select_encryption_key is stricter).
        send = self._send_key
        for ks in self._keys.values():
            newer = send is None or ks.serial > send.serial
            if ks.crypto is not None and newer and ks.sender.all_acked():
                self._switch_send_key(ks, now)

    # -- inputs --------------------------------------------------------------------------
    def receive_datagram(self, data: bytes, now: float) -> None:
        """One UDP datagram or TCP frame from the peer; garbage becomes a counted drop."""
        self._now = now
        if self.closed:
            return
        if not data:
            self._drop("empty")
        elif data[0] >> 3 in _DATA_OPCODES:
            plain = self._receive_data(data, now)
            if plain is not None:
                self._events.append(TunnelPacket(plain))
        else:
            self._receive_control(data, now)

    def _receive_control(self, data: bytes, now: float) -> None:
        try:
            packet = self.wrap.unwrap(data)
        except UnwrapError as exc:
            self._drop("control-" + exc.reason)
            return
        self._handle_control(packet, now)

    def _handle_control(self, packet: ControlPacket, now: float) -> None:
        if not self._accept_session_ids(packet):
            return
        ks = self._keys.get(packet.key_id)
        if ks is None or (
            packet.opcode is Opcode.CONTROL_SOFT_RESET_V1 and ks is not self._latest_key()
        ):
            # a new key state, possibly on a key_id a lame duck still holds (ids wrap 7->1)
            ks = self._start_responding(packet, now)
            if ks is None:
                self._drop("unknown-key-id")
                return
        if not self._before_receive(ks, packet, now):
            return
        self.last_received = now
        if ks.receive(packet, now) is ReceiveVerdict.OUT_OF_WINDOW:
            self._drop("control-out-of-window")
        self._advance(ks, now)
        self._maybe_switch(now)

    def _accept_session_ids(self, packet: ControlPacket) -> bool:
        if self.identity.peer is not None and packet.session_id != self.identity.peer:
            self._drop("wrong-session-id")
            return False
        if packet.acks and packet.remote_session_id != self.identity.own:
            self._drop("wrong-remote-session-id")
            return False
        return True

    def _start_responding(self, packet: ControlPacket, now: float) -> KeyState | None:
        """A SOFT_RESET for the next key_id from the peer: answer with ours (ssl.c)."""
        if (
            packet.opcode is not Opcode.CONTROL_SOFT_RESET_V1
            or packet.message_id != 0
            or self._send_key is None
            or packet.key_id != next_key_id(self._latest_key_id())
        ):
            return None
        ks = self._new_key_state(packet.key_id, now)
        ks.sender.queue(Opcode.CONTROL_SOFT_RESET_V1)
        return ks

    def _advance(self, ks: KeyState, now: float) -> None:
        """Run TLS, then hand records and messages to the role."""
        try:
            self._before_pump(ks)
            ks.pump()
        except TlsError as exc:
            self._key_failed(ks, exc.args[0] if exc.args else "TLS error")
            return
        while ks.records and not ks.peer_km2_seen and not self.closed:
            self._on_key_method(ks, ks.records.pop(0), now)
        while ks.messages and not self.closed:
            self._on_message(ks, ks.messages.pop(0), now)

    def _receive_data(self, data: bytes, now: float) -> bytes | None:
        """Open a data packet; returns the tunnel packet it carries, if it carries one."""
        ks = self._keys.get(data[0] & 0x07)
        crypto = None if ks is None else ks.crypto
        if ks is None or crypto is None:
            self._drop("data-no-key")
            return None
        try:
            plain = crypto.open(data)
        except DataDropped as exc:
            self._drop("data-" + exc.reason)
            return None
        self.last_received = now
        send = self._send_key
        if send is not None and ks.serial > send.serial:
            self._switch_send_key(ks, now)  # the peer demonstrably uses the new key
        return self._data_payload(plain)

    def _data_payload(self, plain: bytes) -> bytes | None:
        """What an opened data packet carries: a tunnel packet, or a ping or OCC to handle."""
        if is_ping(plain):
            return None
        occ = occ_opcode(plain)
        if occ is OccOpcode.EXIT:
            self._events.append(ExitRequested("occ-exit"))
            self._finish("peer exited (OCC EXIT)")
        elif occ is None:
            return plain
        return None

    # -- the fast path (established sessions, no event objects, no output queue) ---------
    def open_data(self, data: bytes, now: float) -> bytes | None:
        """``receive_datagram`` for the hot path: the tunnel packet is returned, not queued.

        Only a data packet on the key we send with takes the short way (one frame down to
        the AEAD, for the cold lone packet of an idle tunnel); anything else (control,
        older or newer keys) goes through ``receive_datagram``. None means "nothing to
        deliver" (that includes pings, OCC and counted drops): events or output may be
        queued, so the caller drains the session as after ``receive_datagram``.
        """
        ks = self._send_key
        crypto = None if ks is None else ks.crypto
        first = data[0] if data else 0
        if (crypto is None or self.closed or first & 0x07 != crypto.key_id
                or first >> 3 not in _DATA_OPCODES):
            self.receive_datagram(data, now)
            return None
        self._now = now
        try:
            plain = crypto.open(data)
        except DataDropped as exc:
            self._drop("data-" + exc.reason)
            return None
        self.last_received = now
        if plain and plain[0] >> 4 in (4, 6):  # an IP packet: neither ping nor OCC
            return plain
        return self._data_payload(plain)

    def seal_data(self, ip_packet: bytes, now: float) -> bytes | None:
        """``send_packet`` for the hot path: the sealed datagram is returned, not queued.

        None means the packet must take the full way (``send_packet`` and then
        ``datagrams_to_send``): no key yet, closing, or the send key is due for a rekey.
        Nothing changes when None is returned.
        """
        ks = self._send_key
        crypto = None if ks is None else ks.crypto
        if crypto is None or self.closed or self._close_at is not None or crypto.needs_rekey:
            return None
        sealed = crypto.seal(ip_packet)  # cannot exhaust: needs_rekey turned true long before
        self._now = self.last_sent = now
        return sealed

    def send_packet(self, ip_packet: bytes, now: float) -> None:
        """Encrypt one tunnel packet for the peer (dropped and counted if no key yet)."""
        self._now = now
        ks = self._send_key
        if self.closed or ks is None or self._close_at is not None:
            self.drops["send-no-key"] += 1
            return
        self._seal(ks, ip_packet, now)

    def _seal(self, ks: KeyState, payload: bytes, now: float) -> None:
        crypto = ks.crypto
        if crypto is None:
            return
        try:
            self._out.append(crypto.seal(payload))
        except PacketIdExhausted:
            self.drops["send-packet-id-exhausted"] += 1
            return
        self.last_sent = now
        if crypto.needs_rekey:
            self.renegotiate(now)

    def handle_timer(self, now: float) -> None:
        """Fire whatever is due: closes, expiries, keepalive, renegotiation."""
        self._now = now
        if self.closed:
            return
        if self._close_at is not None:
            if now >= self._close_at:
                self._finish(self._close_reason)
            return
        for ks in list(self._keys.values()):
            if ks.expires is not None and now >= ks.expires:
                del self._keys[ks.key_id]
            elif ks.crypto is None and now >= ks.deadline:
                self._key_failed(ks, "TLS key negotiation did not finish in hand-window")
        if self.closed or self._send_key is None:
            return
        if self.ping_timeout is not None and now - self.last_received >= self.ping_timeout:
            self._finish("ping-restart: peer silent")
            return
        if self.ping_interval is not None and now - self.last_sent >= self.ping_interval:
            self._seal(self._send_key, PING_MAGIC, now)
        due = self._reneg_due()
        if due is not None and now >= due:
            self.renegotiate(now)

    def _reneg_due(self) -> float | None:
        # Counted from the newest installed key, which may not be the send key yet.
        latest = self._latest_key()
        if self.timing.reneg_seconds is None or self._send_key is None or latest is None:
            return None
        if latest.installed_at is None:
            return None  # a negotiation is running
        return latest.installed_at + self.timing.reneg_seconds

    def close(self) -> None:
        """End the session politely: tell the peer, then report ``SessionClosed``."""
        if self.closed:
            return
        self._say_goodbye()
        self._finish("closed locally")

    # -- outputs -------------------------------------------------------------------------
    def datagrams_to_send(self, now: float) -> list[bytes]:
        """Everything to transmit now: control packets (with retransmits), then data."""
        self._now = now
        out: list[bytes] = []
        for ks in sorted(self._keys.values(), key=lambda k: k.serial):
            for packet in ks.control_packets(self.identity, now, self.wkc):
                out.append(self.wrap.wrap(packet))
        out += self._out
        self._out = []
        return out

    def get_timer(self) -> float | None:
        """The earliest moment ``handle_timer`` has something to do."""
        if self.closed:
            return None
        times: list[float] = []
        if self._close_at is not None:
            times.append(self._close_at)  # keep retransmitting (AUTH_FAILED) until then
            times += [t for ks in self._keys.values() if (t := ks.get_timer()) is not None]
            return min(times)
        for ks in self._keys.values():
            timer = ks.get_timer()
            if timer is not None:
                times.append(timer)
            if ks.expires is not None:
                times.append(ks.expires)
            elif ks.crypto is None:
                times.append(ks.deadline)
        if self._send_key is not None:
            if self.ping_timeout is not None:
                times.append(self.last_received + self.ping_timeout)
            if self.ping_interval is not None:
                times.append(self.last_sent + self.ping_interval)
            due = self._reneg_due()
            if due is not None:
                times.append(due)
        return min(times, default=None)

    def next_event(self) -> Event | None:
        return self._events.pop(0) if self._events else None

    # -- helpers for the roles -----------------------------------------------------------
    def _drop(self, reason: str) -> None:
        self.drops[reason] += 1
        self._events.append(PacketDropped(reason))

    def _send_data_payload(self, payload: bytes) -> None:
        if self._send_key is not None:
            self._seal(self._send_key, payload, self._now)

    def _send_occ_exit(self) -> None:
        self._send_data_payload(OCC_EXIT_PAYLOAD)

    def _linger(self, reason: str, now: float) -> None:
        """Keep answering ACKs for a while, then close (push.c schedule_exit)."""
        if self._close_at is None:
            self._close_at = now + self.timing.linger_seconds
            self._close_reason = reason

    def _finish(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self._events.append(SessionClosed(reason))

    def _key_failed(self, ks: KeyState, reason: str) -> None:
        """A key state died: fatal for the one we send with, else that one carries on."""
        self._keys.pop(ks.key_id, None)
        if self._send_key is None or self._send_key is ks:
            self._finish(reason)

    # -- role hooks ----------------------------------------------------------------------
    def _before_receive(self, ks: KeyState, packet: ControlPacket, now: float) -> bool:
        """Vet a control packet before reliability sees it; False drops it."""
        return True

    def _before_pump(self, ks: KeyState) -> None:
        """Start TLS when the role is ready (client: once its reset was ACKed)."""

    def _on_key_method(self, ks: KeyState, record: bytes, now: float) -> None:
        raise NotImplementedError

    def _on_message(self, ks: KeyState, message: str, now: float) -> None:
        raise NotImplementedError

    def _say_goodbye(self) -> None:
        raise NotImplementedError


def local_key_method(
    rand: Rand, options: str, *, client: bool, peer_info: str = "", username: str = "",
    password: str = "",
) -> KeyMethod2:
    """Our own key-method 2 record with fresh randoms (ssl.c key_method_2_write)."""
    return KeyMethod2(
        random1=rand(32),
        random2=rand(32),
        options=options,
        pre_master=rand(48) if client else None,
        username=username,
        password=password,
        peer_info=peer_info,
    )

