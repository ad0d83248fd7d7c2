"""In-memory harness for IKE pair tests: two IkeSa objects, a wire with optional loss."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from sslvpn.ipsec.ike.config import IkeConfig
from sslvpn.ipsec.ike.constants import NON_ESP_MARKER
from sslvpn.ipsec.ike.events import ChildSaEstablished, IkeEvent
from sslvpn.ipsec.ike.messages import Payload, encode_message, pull_message
from sslvpn.ipsec.ike.sa import IkeSa, IkeState

E = TypeVar("E")
A_ADDR = "198.18.0.1"
B_ADDR = "198.18.0.2"


def config(side: str, *, ike: str = "aes256-sha256-modp2048", esp: str = "aes256gcm16",
           psk: bytes = b"lab-psk-0123456789abcdef", **timers: float) -> IkeConfig:
    a, b = ("siteA.lab", "siteB.lab") if side == "A" else ("siteB.lab", "siteA.lab")
    nets = ["10.1.0.0/24"], ["10.2.0.0/24"]
    local_ts, remote_ts = nets if side == "A" else nets[::-1]
    timers.setdefault("dpd_delay", 30.0)
    return IkeConfig.build(local_id=a, remote_id=b, psk=psk, ike_proposals=ike,
                           esp_proposals=esp, local_ts=local_ts, remote_ts=remote_ts, **timers)


def seeded(seed: int) -> Callable[[int], bytes]:
    rng = random.Random(seed)  # noqa: S311 - deterministic test randomness
    return rng.randbytes


@dataclass
class Pair:
    a: IkeSa  # initiator, at A_ADDR
    b: IkeSa  # responder, at B_ADDR
    now: float = 1000.0
    events: dict[str, list[IkeEvent]] = field(default_factory=lambda: {"a": [], "b": []})
    drop: Callable[[str, bytes], bool] = lambda direction, data: False
    delivered: int = 0

    def run(self, rounds: int = 50) -> None:
        """Move datagrams both ways until the wire is quiet."""
        for _ in range(rounds):
            moved = False
            for name, src, dst in (("a", self.a, self.b), ("b", self.b, self.a)):
                for data, dest in src.datagrams_to_send(self.now):
                    moved = True
                    port = 4500 if data.startswith(NON_ESP_MARKER) else 500
                    assert dest == (dst.local_addr[0], port), (dest, port)
                    if self.drop(name, data):
                        continue
                    self.delivered += 1
                    dst.receive_datagram(data, (src.local_addr[0], port), self.now)
            self.collect()
            if not moved:
                return
        raise AssertionError("wire never went quiet")

    def collect(self) -> None:
        for name, sa in (("a", self.a), ("b", self.b)):
            while (event := sa.next_event()) is not None:
                self.events[name].append(event)

    def advance(self, until: float) -> None:
        """Fire timers in order up to ``until``, moving datagrams after each."""
        while True:
            timers = [t for t in (self.a.get_timer(), self.b.get_timer()) if t is not None]
            due = min(timers) if timers else None
            if due is None or due > until:
                self.now = until
                return
            self.now = max(self.now, due)
            self.a.handle_timer(self.now)
            self.b.handle_timer(self.now)
            self.run()

    def of(self, name: str, kind: type[E]) -> list[E]:
        return [e for e in self.events[name] if isinstance(e, kind)]

    def run_tampered(self, messages: int, which: int, pos: int, xor: int) -> None:
        """Initiate, flip one byte (``pos``, ``xor``) of handshake message ``which`` of
        ``messages``, then run; if both sides still establish, their keys must agree."""
        self.a.initiate(self.now)
        flows = [(self.a, self.b), (self.b, self.a)]
        for step in range(messages):
            src, dst = flows[step % 2]
            for data, _dest in src.datagrams_to_send(self.now):
                if step == which:
                    buf = bytearray(data)
                    buf[pos % len(buf)] ^= xor
                    data = bytes(buf)
                port = 4500 if data[:4] == NON_ESP_MARKER else 500
                dst.receive_datagram(data, (src.local_addr[0], port), self.now)
        self.run()
        if self.a.state is IkeState.ESTABLISHED and self.b.state is IkeState.ESTABLISHED:
            a, b = self.of("a", ChildSaEstablished), self.of("b", ChildSaEstablished)
            assert a and b and a[0].keys_out == b[0].keys_in


def make_pair(a_cfg: IkeConfig | None = None, b_cfg: IkeConfig | None = None,
              seed: int = 1) -> Pair:
    a = IkeSa(a_cfg or config("A"), (A_ADDR, 500), (B_ADDR, 500), initiator=True,
              rand=seeded(seed))
    b = IkeSa(b_cfg or config("B"), (B_ADDR, 500), (A_ADDR, 500), initiator=False,
              rand=seeded(seed + 1000))
    return Pair(a, b)


def establish(pair: Pair) -> Pair:
    pair.a.initiate(pair.now)
    pair.run()
    return pair


def init_request(seed: int = 1, ike: str = "aes256-sha256-ecp256") -> bytes:
    """A real IKE_SA_INIT from our initiator core at A_ADDR (a new SPIi and nonce per seed)."""
    sa = IkeSa(config("A", ike=ike), (A_ADDR, 500), (B_ADDR, 500), initiator=True,
               rand=seeded(seed))
    sa.initiate(0.0)
    ((data, _),) = sa.datagrams_to_send(0.0)
    return data


def with_payloads(data: bytes, *extra: Payload) -> bytes:
    """The same message with more payloads at the end."""
    message = pull_message(data)
    return encode_message(message.header, [*message.payloads, *extra])
