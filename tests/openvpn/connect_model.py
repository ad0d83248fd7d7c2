"""A client-role session that behaves as OpenVPN Connect's engine (openvpn3) where loss matters.

The stock ``ClientSession`` behaves like a 2.6 client: it reads control messages whenever
they arrive. OpenVPN 3 differs in three ways that decide whether a handshake survives a
lossy link (openvpn3 sources, ``openvpn/ssl/proto.hpp`` and ``openvpn/client/cliproto.hpp``):

* its key state goes ACTIVE only after it read the server's key-method 2 record *and* all
  its own control messages were ACKed (``KeyContext::post_ack_action``, run once per
  received packet after the packet's ACKs and payload were handled);
* control messages that arrive before ACTIVE (state ``C_WAIT_AUTH_ACK``) are kept in the
  key state's receive buffer and not read (``KeyContext::app_recv`` has no case for that
  state). They surface only with the *next* message: the buffer is then handed over
  joined, and a joined buffer holds a NUL inside, so ``control_recv`` refuses it as
  "invalid characters" and both are lost;
* it sends PUSH_REQUEST when it goes ACTIVE and again after 1, 2, 3, 3, ... s until the
  reply came (``send_push_request_callback``), and retransmits control packets every
  ``tls-timeout`` (1 s) without back-off (``ReliableSendTemplate``).
"""

from __future__ import annotations

from sslvpn.openvpn.client import ClientSession
from sslvpn.openvpn.key_state import KeyState
from sslvpn.openvpn.packet import ControlPacket
from sslvpn.openvpn.reliable import ReliableSender

TLS_TIMEOUT = 1.0  # proto.hpp ProtoConfig: tls_timeout 1 s, no back-off
PUSH_REQUEST_STEP = 1.0  # cliproto.hpp: 1 s, 2 s, 3 s, 3 s, ...
PUSH_REQUEST_CEILING = 3.0


class ConnectLikeClient(ClientSession):
    """``ClientSession`` with OpenVPN 3's activation, message buffering and push requests."""

    active = False
    held = 0  # control messages read before ACTIVE and still held in the buffer
    lost_messages = 0  # messages thrown away with a joined buffer
    push_replies = 0  # PUSH_REPLY messages read (also the ones after the first)
    push_requests = 0
    _push_at: float | None = None
    _push_interval = 0.0
    _want_push = False

    def _new_key_state(self, key_id: int, now: float) -> KeyState:
        ks = super()._new_key_state(key_id, now)
        ks.sender = ReliableSender(timeout=TLS_TIMEOUT, timeout_max=TLS_TIMEOUT)
        return ks

    def _ask_for_push(self, ks: KeyState, now: float) -> None:
        self._want_push = True  # only once ACTIVE (cliproto.hpp active())

    def _handle_control(self, packet: ControlPacket, now: float) -> None:
        super()._handle_control(packet, now)
        ks = self._keys.get(0)
        if self.active or ks is None or not ks.peer_km2_seen or not ks.sender.all_acked():
            return
        self.active = True  # post_ack_action: C_WAIT_AUTH_ACK -> ACTIVE
        if self._want_push:
            self._request_push(ks, now)

    def _on_message(self, ks: KeyState, message: str, now: float) -> None:
        if ks.key_id != 0:
            super()._on_message(ks, message, now)
        elif not self.active:
            self.held += 1
        elif self.held:
            self.lost_messages += self.held + 1
            self.held = 0
        else:
            self.push_replies += message.startswith("PUSH_REPLY,")
            super()._on_message(ks, message, now)

    def get_timer(self) -> float | None:
        timer = super().get_timer()
        if self._push_at is None or self._send_key is not None or self.closed:
            return timer
        return self._push_at if timer is None else min(timer, self._push_at)

    def handle_timer(self, now: float) -> None:
        super().handle_timer(now)
        ks = self._keys.get(0)
        if self._push_at is None or now < self._push_at or ks is None:
            return
        if self._send_key is not None or self.closed:
            self._push_at = None
        else:
            self._request_push(ks, now)

    def _request_push(self, ks: KeyState, now: float) -> None:
        ks.send_message("PUSH_REQUEST")
        self.push_requests += 1
        self._push_interval = min(self._push_interval + PUSH_REQUEST_STEP, PUSH_REQUEST_CEILING)
        self._push_at = now + self._push_interval
