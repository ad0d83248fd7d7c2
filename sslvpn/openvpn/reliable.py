"""Control-channel reliability for one key state: message ids, ACKs, windows, retransmits.

Each key_id has its own pair of sequence spaces starting at message id 0 (the reset or
soft-reset is id 0) [src reliable.c reliable_mark_active_outgoing]. This module holds
the bookkeeping only; building and wrapping the packets stays with the session, which
re-wraps every retransmission with fresh replay ids and the current ACKs.

* ``ReliableSender``: assigns ids, keeps at most ``window`` (6) un-ACKed messages in
  flight (the peer drops anything beyond its receive window), retransmits after a timeout
  that doubles per retry [src reliable.c reliable_send], fast-retransmits a message after
  ``N_ACK_RETRANSMIT`` ACKs of later ids, and treats ACKs of unknown ids as no-ops
  (2.6 re-sends recent ACKs, reliable.c copy_acks_to_mru). While ``answer_only`` is set
  it sends each message once and retransmits only when told to (``resend``): a server
  that made state from a reset whose source address may be forged sends nothing on its
  own there until the peer has answered.
* ``ReliableReceiver``: accepts ids in ``[next_expected, next_expected + window)``,
  drops (without ACK) anything beyond, ACKs duplicates again without delivering them, and
  delivers strictly in id order [src reliable.c reliable_wont_break_sequentiality].
  Like 2.6 it also remembers the ``ACK_MRU_SIZE`` ids it ACKed most recently and repeats
  them in every ACK block that has room [src reliable.c reliable_ack_write,
  copy_acks_to_mru; ssl_common.h key_state.lru_acks]: a stateless server (HMAC cookie,
  ssl_pkt.c check_session_hmac_and_pkt_id) finds its cookie as the remote session id of
  an ACK block, so the client's first P_CONTROL keeps carrying the ACK of the server's
  reset in every retransmission; without it a lost first TLS record stalls the client.

Time is always passed in (seconds, any monotonic origin).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from sslvpn.openvpn.constants import (
    MAX_ACKS_PER_PACKET,
    N_ACK_RETRANSMIT,
    TLS_RELIABLE_N_REC_BUFFERS,
    TLS_RELIABLE_N_SEND_BUFFERS,
    TLS_TIMEOUT,
    TLS_TIMEOUT_MAX,
    Opcode,
)

#: Recently ACKed ids repeated in later ACK blocks (2.6 sizes lru_acks RELIABLE_ACK_SIZE).
ACK_MRU_SIZE = MAX_ACKS_PER_PACKET


@dataclass(frozen=True, slots=True)
class Message:
    """One reliable control message: its id, the opcode it travels with, its payload."""

    message_id: int
    opcode: Opcode
    payload: bytes = field(repr=False)


@dataclass(slots=True)
class _Outgoing:
    message: Message
    next_send: float | None = None  # None: never sent yet
    timeout: float = TLS_TIMEOUT
    later_acks: int = 0
    sends: int = 0
    asked: bool = False  # the peer repeated itself: retransmit even while answer_only


class ReliableSender:
    """Outgoing message ids and retransmission state of one key state."""

    def __init__(
        self,
        *,
        window: int = TLS_RELIABLE_N_SEND_BUFFERS,
        timeout: float = TLS_TIMEOUT,
        timeout_max: float = TLS_TIMEOUT_MAX,
    ) -> None:
        if window < 1:
            raise ValueError("send window must be positive")
        self._window = window
        self._timeout = timeout
        self._timeout_max = timeout_max
        self._next_id = 0
        self._pending: dict[int, _Outgoing] = {}
        self.retransmissions = 0
        self.answer_only = False  # no timer retransmissions until the peer answered

    @property
    def next_message_id(self) -> int:
        """The id the next queued message will get."""
        return self._next_id

    def queue(self, opcode: Opcode, payload: bytes = b"") -> int:
        """Queue a message for reliable delivery; returns its message id.

        Any number may be queued; only the ``window`` oldest un-ACKed ones are ever sent.
        """
        message_id = self._next_id
        self._next_id += 1
        self._pending[message_id] = _Outgoing(Message(message_id, opcode, payload))
        return message_id

    def skip_to(self, message_id: int) -> None:
        """Start numbering at ``message_id`` (a reset already sent statelessly and ACKed)."""
        if self._pending or message_id < self._next_id:
            raise ValueError("can only skip forward before anything is queued")
        self._next_id = message_id

    def process_acks(self, acks: tuple[int, ...] | list[int], now: float) -> None:
        """Forget ACKed messages; unknown and repeated ids are ignored."""
        for ack in acks:
            if self._pending.pop(ack, None) is None:
                continue
            for message_id, out in self._pending.items():
                if message_id < ack and out.next_send is not None:
                    out.later_acks += 1
                    if out.later_acks == N_ACK_RETRANSMIT:
                        out.next_send = min(out.next_send, now)

    def _in_window(self) -> list[_Outgoing]:
        if not self._pending:
            return []
        limit = min(self._pending) + self._window
        return [out for mid, out in sorted(self._pending.items()) if mid < limit]

    def due(self, now: float) -> list[Message]:
        """Messages to transmit now (first sends and retransmissions), oldest first.

        Calling this marks them as sent at ``now``: the caller must transmit them.
        """
        ready: list[Message] = []
        for out in self._in_window():
            if out.next_send is None:
                out.next_send = now + out.timeout
            elif out.next_send <= now and (out.asked or not self.answer_only):
                out.asked = False
                out.timeout = min(out.timeout * 2, self._timeout_max)
                out.next_send = now + out.timeout
                out.later_acks = 0
                self.retransmissions += 1
            else:
                continue
            out.sends += 1
            ready.append(out.message)
        return ready

    def resend(self, message_id: int, now: float) -> None:
        """Send a message again with the next ``due(now)`` (the peer asked by repeating
        itself), also while ``answer_only``."""
        out = self._pending.get(message_id)
        if out is not None and out.next_send is not None:
            out.next_send = now
            out.asked = True

    def get_timer(self) -> float | None:
        """When the next retransmission falls due, or None when nothing is in flight.

        Messages never sent yet are not timers: drain ``due(now)`` after every input.
        """
        if self.answer_only:
            return None
        times = [out.next_send for out in self._in_window() if out.next_send is not None]
        return min(times, default=None)

    def has_unsent(self) -> bool:
        """Whether queued messages are waiting for window space or a first send."""
        window = self._in_window()
        return len(window) < len(self._pending) or any(o.next_send is None for o in window)

    def delivered(self, before: int) -> bool:
        """Every message with an id below ``before`` was acknowledged."""
        return all(message_id >= before for message_id in self._pending)

    def all_acked(self) -> bool:
        """Everything queued so far was acknowledged (2.6 S_ACTIVE condition)."""
        return not self._pending

    def pending_count(self) -> int:
        return len(self._pending)


class ReceiveVerdict(Enum):
    """What ``ReliableReceiver.receive`` did with a message."""

    ACCEPTED = "accepted"  # new, buffered for in-order delivery, will be ACKed
    DUPLICATE = "duplicate"  # seen before: ACK again, do not deliver
    OUT_OF_WINDOW = "out-of-window"  # too far ahead: drop, do not ACK


class ReliableReceiver:
    """Incoming message ids of one key state: window check, ACK list, ordered delivery."""

    def __init__(self, *, window: int = TLS_RELIABLE_N_REC_BUFFERS) -> None:
        if window < 1:
            raise ValueError("receive window must be positive")
        self._window = window
        self._next_expected = 0
        self._buffered: dict[int, Message] = {}
        self._acks: deque[int] = deque()
        self._recent: tuple[int, ...] = ()  # ids ACKed most recently, newest first

    @property
    def next_expected(self) -> int:
        return self._next_expected

    def skip_to(self, message_id: int) -> None:
        """Expect ``message_id`` next (the peer's reset was handled statelessly)."""
        if message_id < self._next_expected or self._buffered:
            raise ValueError("can only skip forward on an empty receiver")
        self._next_expected = message_id

    def receive(self, message: Message) -> ReceiveVerdict:
        """Take a message that passed unwrapping; queue its ACK unless out of window."""
        mid = message.message_id
        if mid >= self._next_expected + self._window:
            return ReceiveVerdict.OUT_OF_WINDOW
        self._add_ack(mid)
        if mid < self._next_expected or mid in self._buffered:
            return ReceiveVerdict.DUPLICATE
        self._buffered[mid] = message
        return ReceiveVerdict.ACCEPTED

    def _add_ack(self, mid: int) -> None:
        if mid not in self._acks:
            self._acks.append(mid)

    def pop_ready(self) -> list[Message]:
        """Buffered messages that are next in id order, removed from the buffer."""
        ready: list[Message] = []
        while self._next_expected in self._buffered:
            ready.append(self._buffered.pop(self._next_expected))
            self._next_expected += 1
        return ready

    def has_acks(self) -> bool:
        """Ids wait for their first ACK (repeats alone never warrant a packet)."""
        return bool(self._acks)

    def take_acks(self, limit: int) -> tuple[int, ...]:
        """The ACK block of one outgoing packet, at most ``limit`` ids.

        Ids still to be ACKed come first, oldest first, and count as sent; the room left
        is filled with other recently ACKed ids, newest first (reliable.c
        reliable_ack_write: the fresh ids move to the front of the MRU, the block is the
        MRU's head). An empty receiver gives an empty block.
        """
        count = min(limit, len(self._acks))
        fresh = [self._acks.popleft() for _ in range(count)]
        if fresh:
            older = (mid for mid in self._recent if mid not in fresh)
            self._recent = (*fresh, *older)[:ACK_MRU_SIZE]
        return self._recent[:limit]
