"""Reliability layer: window rules, ACK handling and the ACK MRU, back-off, a lossy run."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sslvpn.openvpn.constants import Opcode
from sslvpn.openvpn.reliable import (
    ACK_MRU_SIZE,
    Message,
    ReceiveVerdict,
    ReliableReceiver,
    ReliableSender,
)


def msg(mid: int, payload: bytes = b"") -> Message:
    return Message(mid, Opcode.CONTROL_V1, payload)


def test_ids_start_at_zero_and_send_window_is_six() -> None:
    sender = ReliableSender()
    ids = [sender.queue(Opcode.CONTROL_V1, bytes([i])) for i in range(8)]
    assert ids == list(range(8))
    first = sender.due(0.0)
    assert [m.message_id for m in first] == [0, 1, 2, 3, 4, 5]
    assert sender.due(0.5) == [] and sender.has_unsent()
    sender.process_acks((0, 1), 0.5)
    assert [m.message_id for m in sender.due(0.5)] == [6, 7]
    assert not sender.has_unsent() and not sender.all_acked()


def test_retransmit_doubles_and_acks_stop_it() -> None:
    sender = ReliableSender(timeout=2.0)
    sender.queue(Opcode.CONTROL_HARD_RESET_SERVER_V2)
    assert [m.message_id for m in sender.due(10.0)] == [0]
    assert sender.get_timer() == 12.0
    assert sender.due(11.9) == []
    assert len(sender.due(12.0)) == 1 and sender.get_timer() == 16.0
    assert len(sender.due(16.0)) == 1 and sender.get_timer() == 24.0
    assert sender.retransmissions == 2
    sender.process_acks([0], 17.0)
    assert sender.all_acked() and sender.get_timer() is None and sender.due(100.0) == []


def test_unknown_and_repeated_acks_are_no_ops() -> None:
    sender = ReliableSender()
    sender.queue(Opcode.CONTROL_V1, b"a")
    sender.due(0.0)
    sender.process_acks((7, 99, 2**32 - 1), 0.1)
    assert sender.pending_count() == 1
    sender.process_acks((0, 0), 0.2)
    sender.process_acks((0,), 0.3)
    assert sender.all_acked()


def test_fast_retransmit_after_three_later_acks() -> None:
    sender = ReliableSender(timeout=2.0)
    for _ in range(4):
        sender.queue(Opcode.CONTROL_V1, b"x")
    sender.due(0.0)
    sender.process_acks((1,), 0.1)
    sender.process_acks((2,), 0.2)
    assert sender.due(0.25) == []
    sender.process_acks((3,), 0.3)
    assert [m.message_id for m in sender.due(0.3)] == [0]


def test_receiver_window_duplicates_and_order() -> None:
    rx = ReliableReceiver()
    assert rx.receive(msg(12)) is ReceiveVerdict.OUT_OF_WINDOW
    assert not rx.has_acks()
    assert rx.receive(msg(2, b"c")) is ReceiveVerdict.ACCEPTED
    assert rx.pop_ready() == []
    assert rx.receive(msg(0, b"a")) is ReceiveVerdict.ACCEPTED
    assert [m.payload for m in rx.pop_ready()] == [b"a"]
    assert rx.receive(msg(2, b"c")) is ReceiveVerdict.DUPLICATE
    assert rx.receive(msg(1, b"b")) is ReceiveVerdict.ACCEPTED
    assert [m.payload for m in rx.pop_ready()] == [b"b", b"c"]
    assert rx.receive(msg(0, b"a")) is ReceiveVerdict.DUPLICATE
    assert rx.take_acks(4) == (2, 0, 1)
    assert not rx.has_acks() and rx.take_acks(8) == (2, 0, 1)  # repeats only
    assert rx.receive(msg(1)) is ReceiveVerdict.DUPLICATE
    assert rx.take_acks(8) == (1, 2, 0)
    assert rx.next_expected == 3
    assert rx.receive(msg(14)) is ReceiveVerdict.ACCEPTED  # 3 + 12 is the first outside
    assert rx.receive(msg(15)) is ReceiveVerdict.OUT_OF_WINDOW


def test_ack_limits() -> None:
    rx = ReliableReceiver()
    for i in range(10):
        rx.receive(msg(i))
    assert rx.take_acks(4) == (0, 1, 2, 3)
    assert rx.take_acks(8) == (4, 5, 6, 7, 8, 9, 0, 1)  # 6 new, then the newest repeats
    assert not rx.has_acks()


# -- ACK MRU (2.6 lru_acks) ---------------------------------------------------------------
def test_empty_receiver_has_an_empty_ack_block() -> None:
    rx = ReliableReceiver()
    assert rx.take_acks(4) == () and rx.take_acks(8) == ()


def test_reset_ack_is_repeated_in_every_later_block() -> None:
    """The client's first P_CONTROL and all its retransmissions carry the reset's ACK."""
    rx = ReliableReceiver()
    rx.receive(msg(0))
    assert rx.take_acks(4) == (0,)
    assert not rx.has_acks()
    assert [rx.take_acks(4) for _ in range(3)] == [(0,)] * 3


def test_mru_keeps_the_eight_newest_ids_newest_first() -> None:
    rx = ReliableReceiver()
    for i in range(12):
        rx.receive(msg(i))
        rx.pop_ready()
        assert rx.take_acks(4) == tuple(range(i, max(-1, i - 4), -1))
    assert rx.take_acks(8) == tuple(range(11, 3, -1))
    assert len(rx.take_acks(255)) == ACK_MRU_SIZE == 8


def test_reacked_duplicate_moves_to_the_front_once() -> None:
    rx = ReliableReceiver()
    for i in range(3):
        rx.receive(msg(i))
    assert rx.take_acks(8) == (0, 1, 2)
    rx.receive(msg(1))  # the peer retransmitted: ACK it again
    assert rx.take_acks(8) == (1, 0, 2)
    assert rx.take_acks(2) == (1, 0)


def test_fresh_ids_always_fit_before_repeats() -> None:
    rx = ReliableReceiver()
    for i in range(4):
        rx.receive(msg(i))
    rx.take_acks(8)
    for i in range(4, 9):
        rx.receive(msg(i))
    assert rx.take_acks(4) == (4, 5, 6, 7)  # no room for repeats
    assert rx.take_acks(4) == (8, 4, 5, 6)


def test_out_of_window_ids_are_never_acked() -> None:
    rx = ReliableReceiver()
    rx.receive(msg(0))
    rx.receive(msg(40))
    assert rx.take_acks(8) == (0,)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 20), st.integers(1, 8).map(lambda n: -n)),
                max_size=60))
def test_ack_blocks_are_bounded_fresh_first_and_repeat_the_last_block(ops: list[int]) -> None:
    """Non-negative op: a message id arrives; negative: take a block of at most -op ids."""
    rx = ReliableReceiver()
    pending: list[int] = []  # reference: ids waiting for their first ACK, oldest first
    acked: set[int] = set()
    previous: tuple[int, ...] | None = None
    for op in ops:
        if op >= 0:
            if rx.receive(msg(op)) is not ReceiveVerdict.OUT_OF_WINDOW and op not in pending:
                pending.append(op)
            rx.pop_ready()
            previous = None
            continue
        limit = -op
        block = rx.take_acks(limit)
        fresh, pending = pending[:limit], pending[limit:]
        acked.update(fresh)
        assert len(set(block)) == len(block) <= limit
        assert list(block[: len(fresh)]) == fresh
        assert set(block) <= acked
        assert len(block) == min(limit, ACK_MRU_SIZE, len(acked))
        if previous is not None and not fresh:
            shorter = min(len(previous), len(block))
            assert block[:shorter] == previous[:shorter]  # a retransmission repeats the ACKs
        previous = block


def test_skip_to_after_a_stateless_reset() -> None:
    sender, rx = ReliableSender(), ReliableReceiver()
    sender.skip_to(1)
    rx.skip_to(1)
    assert sender.queue(Opcode.CONTROL_V1) == 1
    assert rx.receive(msg(0)) is ReceiveVerdict.DUPLICATE
    with pytest.raises(ValueError):
        sender.skip_to(0)


# -- two endpoints over a hostile network ----------------------------------------------------
@dataclass
class Wire:
    acks: tuple[int, ...]
    message: Message | None


@dataclass
class Endpoint:
    sender: ReliableSender = field(default_factory=ReliableSender)
    receiver: ReliableReceiver = field(default_factory=ReliableReceiver)
    delivered: list[bytes] = field(default_factory=list)

    def output(self, now: float) -> list[Wire]:
        out = [Wire(self.receiver.take_acks(4), m) for m in self.sender.due(now)]
        while self.receiver.has_acks():
            out.append(Wire(self.receiver.take_acks(8), None))
        return out

    def deliver(self, wire: Wire, now: float) -> None:
        self.sender.process_acks(wire.acks, now)
        if wire.message is not None:
            self.receiver.receive(wire.message)
            self.delivered += [m.payload for m in self.receiver.pop_ready()]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=4), min_size=1, max_size=30),
    st.lists(st.binary(min_size=1, max_size=4), max_size=30),
    st.lists(st.sampled_from(["deliver", "drop", "dup", "reorder"]), max_size=400),
)
def test_stream_arrives_in_order_despite_loss_reordering_duplication(
    a_stream: list[bytes], b_stream: list[bytes], chaos: list[str]
) -> None:
    a, b = Endpoint(), Endpoint()
    for item in a_stream:
        a.sender.queue(Opcode.CONTROL_V1, item)
    for item in b_stream:
        b.sender.queue(Opcode.CONTROL_V1, item)
    now = 0.0
    in_flight: list[tuple[Endpoint, Wire]] = []
    fate = iter(chaos)
    for _ in range(3000):
        done = a.delivered == b_stream and b.delivered == a_stream
        if done and a.sender.all_acked() and b.sender.all_acked():
            break
        in_flight += [(b, w) for w in a.output(now)] + [(a, w) for w in b.output(now)]
        next_round: list[tuple[Endpoint, Wire]] = []
        for dest, wire in in_flight:
            action = next(fate, "deliver")
            if action == "deliver":
                dest.deliver(wire, now)
            elif action == "dup":
                dest.deliver(wire, now)
                next_round.append((dest, wire))
            elif action == "reorder":
                next_round.append((dest, wire))
        in_flight = next_round
        timers = [t for t in (a.sender.get_timer(), b.sender.get_timer()) if t is not None]
        now = max(now + 0.01, min(timers, default=now))
    assert a.delivered == b_stream
    assert b.delivered == a_stream
    assert a.sender.all_acked() and b.sender.all_acked()


def test_delivered_means_every_earlier_id_was_acked() -> None:
    sender = ReliableSender()
    for _ in range(3):
        sender.queue(Opcode.CONTROL_V1, b"x")
    sender.due(0.0)
    sender.process_acks((0, 2), 0.1)
    assert sender.delivered(1) and not sender.delivered(2) and not sender.delivered(3)
    sender.process_acks((1,), 0.2)
    assert sender.delivered(3) and sender.all_acked()
