"""Both sides rekey the same CHILD_SA at once (RFC 7296 §2.8.1), both sides ours.

A small model of the runtime's SAD follows each side's events (inbound SAs installed until
deleted, one outbound SA) and, after every single datagram, checks that what each side
sends on is installed inbound on the other with the same keys: a packet sent at any
instant of the collision would be accepted. At the end exactly one CHILD_SA is left and
both sides agree on it; across seeds both outcomes of the lowest-nonce rule occur.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

import pytest

from sslvpn.ipsec.ike import events as ev
from sslvpn.ipsec.ike.constants import NON_ESP_MARKER
from sslvpn.ipsec.ike.sa import IkeState

from .ike_pair import Pair, config, establish, make_pair

E = TypeVar("E")


@dataclass
class Sad:
    """What the runtime installs from one side's events."""

    inbound: dict[int, ev.EspKeys] = field(default_factory=dict)
    outbound: tuple[int, ev.EspKeys] | None = None
    redundant_seen: int = 0
    promoted: int = 0
    events: list[ev.IkeEvent] = field(default_factory=list)

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    inbound_only: set[int] = field(default_factory=set)

    def apply(self, event: ev.IkeEvent) -> None:
        """Inbound-only SAs are the redundant SA of a collision, or a rekey's new SA held
        back until the old one goes (then announced again, outbound)."""
        self.events.append(event)
        if isinstance(event, ev.ChildSaEstablished):
            self.inbound[event.spi_in] = event.keys_in
            if event.outbound:
                self.outbound = (event.spi_out, event.keys_out)
                if event.spi_in in self.inbound_only:
                    self.promoted += 1  # held back until the old SA went
                self.inbound_only.discard(event.spi_in)
            else:
                self.inbound_only.add(event.spi_in)
        elif isinstance(event, ev.ChildSaDeleted):
            if event.spi_in in self.inbound_only:
                self.redundant_seen += 1  # never sent on: the redundant SA
                self.inbound_only.discard(event.spi_in)
            self.inbound.pop(event.spi_in, None)
            if self.outbound is not None and self.outbound[0] == event.spi_out:
                self.outbound = None


def _receives(sender: Sad, receiver: Sad) -> bool:
    if sender.outbound is None:
        return False
    spi, keys = sender.outbound
    return receiver.inbound.get(spi) == keys


def _step(pair: Pair, sads: dict[str, Sad], lose: set[int]) -> int:
    """Deliver queued datagrams one at a time, in order per direction, and check after
    each that ESP sent now by either side would be accepted: the receiver has the SA, or an
    IKE message still ahead of that ESP on the same path is about to install it."""
    sides = {"a": (pair.a, pair.b, "b"), "b": (pair.b, pair.a, "a")}
    wires: dict[str, list[bytes]] = {name: [] for name in sides}
    moved = 0

    def pull() -> None:
        for name, (src, _dst, _other) in sides.items():
            wires[name] += [data for data, _ in src.datagrams_to_send(pair.now)]

    pull()
    while wires["a"] or wires["b"]:
        name = "a" if wires["a"] else "b"
        src, dst, other = sides[name]
        data = wires[name].pop(0)
        moved += 1
        pair.delivered += 1
        if pair.delivered not in lose:
            port = 4500 if data.startswith(NON_ESP_MARKER) else 500
            dst.receive_datagram(data, (src.local_addr[0], port), pair.now)
        for side, sa in ((name, src), (other, dst)):
            while (event := sa.next_event()) is not None:
                sads[side].apply(event)
        pull()
        assert _receives(sads["a"], sads["b"]) or wires["a"]
        assert _receives(sads["b"], sads["a"]) or wires["b"]
    return moved


def _settle(pair: Pair, sads: dict[str, Sad], lose: set[int], until: float) -> None:
    while True:
        while _step(pair, sads, lose):
            pass
        due = [t for t in (pair.a.get_timer(), pair.b.get_timer()) if t is not None]
        if not due or min(due) > until:
            return
        pair.now = max(pair.now, min(due))
        for sa in (pair.a, pair.b):
            sa.handle_timer(pair.now)


def _run_for(pair: Pair, sads: dict[str, Sad], seconds: float) -> None:
    """Let both sides' timers run (rekeys start on their own), checking ESP throughout."""
    end = pair.now + seconds
    while pair.now < end:
        _settle(pair, sads, set(), pair.now + 5)
        pair.now += 5
        for sa in (pair.a, pair.b):
            sa.handle_timer(pair.now)
    _settle(pair, sads, set(), pair.now + 1)


def _up(seed: int, **timers: float) -> tuple[Pair, dict[str, Sad]]:
    """An established pair and each side's SAD model, fed with the events so far."""
    timers = {"dpd_delay": 0.0, "retransmit_base": 1.0, **timers}
    pair = establish(make_pair(config("A", **timers), config("B", **timers), seed=seed))
    assert pair.a.state is IkeState.ESTABLISHED
    sads = {"a": Sad(), "b": Sad()}
    pair.collect()
    for name in "ab":
        for event in pair.events[name]:
            sads[name].apply(event)
    return pair, sads


def _collide(seed: int, lose_peer_request: bool) -> tuple[Pair, dict[str, Sad]]:
    pair, sads = _up(seed)
    pair.a.rekey_child(pair.now)
    pair.b.rekey_child(pair.now)
    lose: set[int] = set()
    if lose_peer_request:  # B's request is lost once: A's rekey completes first
        lose.add(pair.delivered + 2)
    _settle(pair, sads, lose, pair.now + 30)
    return pair, sads


def _one_child_each(pair: Pair) -> None:
    (a,), (b,) = pair.a.children, pair.b.children
    assert (a.spi_in, a.spi_out) == (b.spi_out, b.spi_in)
    assert a.keys_out == b.keys_in and a.keys_in == b.keys_out


@pytest.mark.parametrize("lose_peer_request", [False, True])
def test_simultaneous_child_rekeys_keep_one_sa_and_lose_nothing(lose_peer_request: bool) -> None:
    outcomes: set[str] = set()
    for seed in range(1, 13):
        pair, sads = _collide(seed, lose_peer_request)
        _one_child_each(pair)
        for sa, sad in ((pair.a, sads["a"]), (pair.b, sads["b"])):
            (child,) = sa.children
            assert set(sad.inbound) == {int.from_bytes(child.spi_in, "big")}
            assert sad.outbound is not None
            assert sad.outbound[0] == int.from_bytes(child.spi_out, "big")
        if not lose_peer_request:
            # one redundant SA, inbound only on both sides until deleted; the side that lost
            # sends on the peer's new SA once the old one is gone, the winner on its own
            assert sads["a"].redundant_seen == sads["b"].redundant_seen == 1
            assert sads["a"].promoted + sads["b"].promoted == 1
            outcomes.add("b" if sads["a"].promoted else "a")
        assert pair.a.state is IkeState.ESTABLISHED and pair.b.state is IkeState.ESTABLISHED
    if not lose_peer_request:
        assert outcomes == {"a", "b"}  # both branches of the lowest-nonce rule ran


def test_repeated_collisions_under_short_lifetimes_stay_single() -> None:
    """Same lifetimes, no jitter: every rekey collides; an hour keeps one SA throughout."""
    timers = {"dpd_delay": 0.0, "child_rekey_time": 20.0, "child_life_time": 30.0,
              "child_rekey_jitter": 0.0, "retransmit_base": 1.0}
    pair, sads = _up(7, **timers)
    _run_for(pair, sads, 3600)
    collided = sads["a"].redundant_seen + sads["b"].redundant_seen
    assert collided >= 100  # the collisions really happened, about one every 20 s
    _one_child_each(pair)


# -- the IKE SA itself (RFC 7296 §2.8.2) -------------------------------------------------------


def _one_ike_sa(pair: Pair) -> None:
    """Both sides are left with one and the same IKE SA, with the same keys."""
    a, b = pair.a._ctx, pair.b._ctx  # noqa: SLF001
    assert pair.a.local_spis == {pair.a.local_spi} and pair.b.local_spis == {pair.b.local_spi}
    assert (a.spi_i, a.spi_r) == (b.spi_i, b.spi_r) and a.initiator != b.initiator
    assert a.keys is not None and b.keys is not None and a.keys.sk_d == b.keys.sk_d
    assert pair.a._passive is None and pair.b._passive is None  # noqa: SLF001


@pytest.mark.parametrize("lose", ["nothing", "b-request", "a-response"])
def test_simultaneous_ike_rekeys_keep_one_ike_sa_and_lose_nothing(lose: str) -> None:
    """Both sides rekey the IKE SA at once. Whatever reaches whom, one IKE SA survives on
    both sides (the lowest nonce's SA is deleted by its creator), CHILD_SAs never change
    and ESP sent at any instant is accepted; across seeds both sides win sometimes.
    "b-request": B's request is lost once (A never sees the collision); "a-response": the
    answer to A is lost once (B's DELETE of the old SA or its retransmission settles it).
    Either way it is settled within one retransmission, never by refusing and retrying."""
    winners = set()
    for seed in range(1, 13):
        pair, sads = _up(seed)
        pair.a.rekey_ike(pair.now)
        pair.b.rekey_ike(pair.now)
        lost = {"nothing": set(), "b-request": {pair.delivered + 2},
                "a-response": {pair.delivered + 4}}[lose]
        _settle(pair, sads, lost, pair.now + 1.5)  # one retransmission, no retried rekey
        a, b = pair.a._ctx, pair.b._ctx  # noqa: SLF001
        assert (a.spi_i, a.spi_r) == (b.spi_i, b.spi_r), "not settled in one exchange"
        _settle(pair, sads, set(), pair.now + 60)  # a redundant SA may wait for its DELETE
        _one_ike_sa(pair)
        _one_child_each(pair)
        for sad in sads.values():
            assert len(sad.of(ev.ChildSaEstablished)) == 1 and not sad.of(ev.ChildSaDeleted)
            assert not sad.of(ev.IkeSaClosed) and not sad.of(ev.IkeRekeyFailed)
            assert len(sad.of(ev.IkeSaRekeyed)) == 1
        if lose == "nothing":  # both saw the collision and say so
            assert all(e.collision for sad in sads.values() for e in sad.of(ev.IkeSaRekeyed))
        winners.add(pair.a._ctx.initiator)  # noqa: SLF001 - A created the surviving SA
        pair.b.rekey_child(pair.now)  # the survivor works
        _settle(pair, sads, set(), pair.now + 30)
        _one_child_each(pair)
        assert pair.a.state is IkeState.ESTABLISHED and pair.b.state is IkeState.ESTABLISHED
    if lose == "nothing":
        assert winners == {True, False}  # both branches of the lowest-nonce rule ran


def test_repeated_ike_rekey_collisions_under_short_lifetimes_stay_single() -> None:
    """Same short IKE and CHILD lifetimes on both sides, no jitter: for an hour every IKE
    rekey collides (and CHILD rekeys with them); one IKE SA and one CHILD_SA throughout."""
    timers = {"dpd_delay": 0.0, "ike_rekey_time": 30.0, "ike_rekey_jitter": 0.0,
              "child_rekey_time": 20.0, "child_life_time": 30.0, "child_rekey_jitter": 0.0,
              "retransmit_base": 1.0}
    pair, sads = _up(3, **timers)
    _run_for(pair, sads, 3600)
    rekeys = [len(sads[name].of(ev.IkeSaRekeyed)) for name in "ab"]
    assert rekeys[0] == rekeys[1] >= 100  # about one every 30 s, the same on both sides
    _one_ike_sa(pair)
    _one_child_each(pair)
    for sad in sads.values():
        assert not sad.of(ev.IkeSaClosed) and not sad.of(ev.IkeRekeyFailed)
