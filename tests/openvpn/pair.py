"""A client-role and a server-role session wired back to back, no sockets, time by hand.

The ``Pair`` moves datagrams through a ``ServerAcceptor`` until it creates the server
session (exactly as the runtime will), lets tests drop, duplicate or reorder datagrams,
and records every event per side. ``PeerVerified`` is answered by ``decide`` (accept with
a fixed push config unless a test says otherwise).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from sslvpn.openvpn.client import ClientConfig, ClientSession
from sslvpn.openvpn.endpoint import Timing
from sslvpn.openvpn.events import Event, PeerVerified
from sslvpn.openvpn.push import PushConfig
from sslvpn.openvpn.server import AcceptorConfig, CreateSession, Reply, ServerAcceptor
from sslvpn.openvpn.session import ServerConfig, ServerSession
from sslvpn.openvpn.static_key import timestamp_metadata, wrap_client_key
from sslvpn.openvpn.tls_wrap import (
    ControlCodec,
    PlainCodec,
    ServerWrapKeys,
    TlsAuthCodec,
    TlsCryptCodec,
)
from tests.openvpn.conftest import Issued, Pki

TC_KEY = bytes((i * 7 + 3) % 256 for i in range(256))
V2_SERVER_KEY = bytes((i * 11 + 5) % 256 for i in range(128))
V2_CLIENT_KEY = bytes((i * 13 + 1) % 256 for i in range(256))
ADDRESS = ("198.18.0.2", 40000)

PUSH = PushConfig(
    ifconfig=ipaddress.IPv4Interface("10.8.0.2/24"),
    route_gateway=ipaddress.IPv4Address("10.8.0.1"),
    peer_id=5,
    routes=(ipaddress.IPv4Network("10.10.0.0/24"),),
)

Filter = Callable[[str, list[bytes]], list[bytes]]


def _counter_rand() -> Callable[[int], bytes]:
    state = {"n": 0}

    def rand(n: int) -> bytes:
        state["n"] += 1
        seed = state["n"].to_bytes(4, "big")
        return (seed * (n // 4 + 1))[:n]

    return rand


@dataclass
class Pair:
    pki: Pki
    wrap: str = "tls-crypt"
    tcp: bool = False
    force_cookie: bool = True
    client_cert: Issued | None = None
    peer_info: str | None = None
    options: str | None = None  # the client's OCC string, e.g. as an older OpenVPN sends it
    server_timing: Timing = field(default_factory=Timing)
    client_timing: Timing = field(default_factory=lambda: Timing(reneg_seconds=None))
    data_ciphers: tuple[str, ...] = ("AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305")
    allow_ekm: bool = True
    decide: Callable[[ServerSession, PeerVerified], None] | None = None
    now: float = 1000.0
    client_events: list[Event] = field(default_factory=list)
    server_events: list[Event] = field(default_factory=list)
    server: ServerSession | None = None
    filter: Filter | None = None
    client_class: type[ClientSession] = ClientSession

    def __post_init__(self) -> None:
        wkc = None
        if self.wrap == "tls-crypt-v2":
            keys = ServerWrapKeys.tls_crypt_v2(V2_SERVER_KEY)
            codec: ControlCodec = TlsCryptCodec(V2_CLIENT_KEY, server=False)
            wkc = wrap_client_key(V2_SERVER_KEY, V2_CLIENT_KEY, timestamp_metadata(1_700_000_000))
        elif self.wrap == "tls-auth":
            keys = ServerWrapKeys.tls_auth(TC_KEY, direction=0, digest="SHA256")
            codec = TlsAuthCodec(TC_KEY, direction=1, digest="SHA256")
        elif self.wrap == "none":
            keys, codec = ServerWrapKeys.none(), PlainCodec()
        else:
            keys = ServerWrapKeys.tls_crypt(TC_KEY)
            codec = TlsCryptCodec(TC_KEY, server=False)
        self.acceptor = ServerAcceptor(AcceptorConfig(wrap=keys, tcp=self.tcp,
                                                      force_cookie=self.force_cookie))
        self.server_config = ServerConfig(
            tls=self.pki.server_context(), tcp=self.tcp, data_ciphers=self.data_ciphers,
            allow_ekm=self.allow_ekm, timing=self.server_timing,
        )
        extra = {} if self.peer_info is None else {"peer_info": self.peer_info}
        if self.options is not None:
            extra["options"] = self.options
        self.client = self.client_class(
            ClientConfig(
                tls=self.pki.client_context(self.client_cert), codec=codec, wkc=wkc,
                tcp=self.tcp, timing=self.client_timing, **extra,  # type: ignore[arg-type]
            ),
            self.now,
            rand=_counter_rand(),
        )

    # -- moving bytes ----------------------------------------------------------------------
    def _to_server(self, datagrams: list[bytes]) -> None:
        for data in datagrams:
            if self.server is None:
                decision = self.acceptor.receive(data, ADDRESS, self.now)
                if isinstance(decision, Reply):
                    self.client.receive_datagram(decision.data, self.now)
                elif isinstance(decision, CreateSession):
                    self.server = ServerSession(self.server_config, decision, self.now)
            else:
                self.server.receive_datagram(data, self.now)

    def drain_events(self) -> None:
        for event in iter(self.client.next_event, None):
            self.client_events.append(event)
        if self.server is None:
            return
        for event in iter(self.server.next_event, None):
            self.server_events.append(event)
            if isinstance(event, PeerVerified):
                if self.decide is None:
                    self.server.accept(PUSH)
                else:
                    self.decide(self.server, event)

    def step(self) -> int:
        """One exchange in each direction; returns how many datagrams moved."""
        c2s = self.client.datagrams_to_send(self.now)
        if self.filter is not None:
            c2s = self.filter("c2s", c2s)
        self._to_server(c2s)
        self.drain_events()
        s2c = [] if self.server is None else self.server.datagrams_to_send(self.now)
        if self.filter is not None:
            s2c = self.filter("s2c", s2c)
        for data in s2c:
            self.client.receive_datagram(data, self.now)
        self.drain_events()
        return len(c2s) + len(s2c)

    def run(self, max_steps: int = 60) -> None:
        """Exchange until nothing moves (no sleeping: bounded by steps)."""
        for _ in range(max_steps):
            if self.step() == 0:
                return

    def advance(self, seconds: float) -> None:
        """Move the clock, firing timers due in between in order, then exchange."""
        end = self.now + seconds
        for _ in range(10_000):
            timers = [t for t in (self.client.get_timer(),
                                  self.server.get_timer() if self.server else None)
                      if t is not None and t <= end]
            if not timers:
                break
            self.now = max(self.now, min(timers))
            self.client.handle_timer(self.now)
            if self.server is not None:
                self.server.handle_timer(self.now)
            self.run()
        self.now = end
        self.run()

    def connect(self) -> ServerSession:
        self.run()
        assert self.server is not None
        return self.server
