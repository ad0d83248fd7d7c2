"""Both sides rekey the same CHILD_SA at once (RFC 7296 §2.8.1), both sides ours.

A small model of the runtime's SAD follows each side's events (inbound SAs installed until
deleted, one outbound SA) and, after every single datagram, checks that what each side
sends on is installed inbound on the other with the same keys: a packet sent at any
instant of the collision would be accepted. At the end exactly one CHILD_SA is left and
both sides agree on it; across seeds both outcomes of the lowest-nonce rule occur.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from sslvpn.ipsec.ike import events as ev
from sslvpn.ipsec.ike.constants import NON_ESP_MARKER
from sslvpn.ipsec.ike.sa import IkeState

from .ike_pair import Pair, config, establish, make_pair


@dataclass
class Sad:
    """What the runtime installs from one side's events."""

    inbound: dict[int, ev.EspKeys] = field(default_factory=dict)
    outbound: tuple[int, ev.EspKeys] | None = None
    redundant_seen: int = 0

    def apply(self, event: ev.IkeEvent) -> None:
        if isinstance(event, ev.ChildSaEstablished):
            self.inbound[event.spi_in] = event.keys_in
            if event.outbound:
                self.outbound = (event.spi_out, event.keys_out)
            else:
                self.redundant_seen += 1
        elif isinstance(event, ev.ChildSaDeleted):
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


def _collide(seed: int, lose_peer_request: bool) -> tuple[Pair, dict[str, Sad]]:
    pair = establish(make_pair(config("A", dpd_delay=0.0, retransmit_base=1.0),
                               config("B", dpd_delay=0.0, retransmit_base=1.0), seed=seed))
    assert pair.a.state is IkeState.ESTABLISHED
    sads = {"a": Sad(), "b": Sad()}
    pair.collect()
    for name in "ab":
        for event in pair.events[name]:
            sads[name].apply(event)
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
            # exactly one side created the redundant SA: it installed it inbound only
            assert sads["a"].redundant_seen + sads["b"].redundant_seen == 1
            outcomes.add("a" if sads["a"].redundant_seen else "b")
        assert pair.a.state is IkeState.ESTABLISHED and pair.b.state is IkeState.ESTABLISHED
    if not lose_peer_request:
        assert outcomes == {"a", "b"}  # both branches of the lowest-nonce rule ran


def test_repeated_collisions_under_short_lifetimes_stay_single() -> None:
    """Same lifetimes, no jitter: every rekey collides; an hour keeps one SA throughout."""
    timers = {"dpd_delay": 0.0, "child_rekey_time": 20.0, "child_life_time": 30.0,
              "child_rekey_jitter": 0.0, "retransmit_base": 1.0}
    pair = establish(make_pair(config("A", **timers), config("B", **timers), seed=7))
    sads = {"a": Sad(), "b": Sad()}
    pair.collect()
    for name in "ab":
        for event in pair.events[name]:
            sads[name].apply(event)
    rekeys = 0
    end = pair.now + 3600
    while pair.now < end:
        _settle(pair, sads, set(), pair.now + 5)
        pair.now += 5
        for sa in (pair.a, pair.b):
            sa.handle_timer(pair.now)
        rekeys = max(rekeys, sads["a"].redundant_seen + sads["b"].redundant_seen)
    _settle(pair, sads, set(), pair.now + 1)
    assert rekeys >= 100  # the collisions really happened, about one every 20 s
    _one_child_each(pair)
