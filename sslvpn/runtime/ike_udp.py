"""UDP 500 and 4500 for IKEv2 and ESP-in-UDP on one local address (RFC 7296 2.23, RFC 3948).

Port 500 carries bare IKE messages. Port 4500 carries three things told apart by their first
bytes (RFC 3948 section 2): a single 0xFF byte is a NAT keepalive (dropped, never answered),
four zero bytes (the non-ESP marker) precede an IKE message, anything else is ESP starting
with its non-zero SPI. The marker is added and removed here, so the IKE core only ever sees
and produces bare IKE messages; it tells the transport which port a message travels on.
Short or malformed datagrams are counted drops. Keepalives are sent on request (when we are
behind NAT) by `send_keepalive`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from enum import Enum

Address = tuple[str, int]

NON_ESP_MARKER = b"\x00\x00\x00\x00"  # RFC 3948 section 2.2
NAT_KEEPALIVE = b"\xff"  # RFC 3948 section 2.3
ESP_MIN_LEN = 8  # SPI + sequence number
IKE_PORT = 500
NAT_T_PORT = 4500
KEEPALIVE_INTERVAL = 20.0  # seconds of silence before a keepalive (strongSwan's default)


class Datagram(Enum):
    IKE = "ike"
    ESP = "esp"
    KEEPALIVE = "keepalive"
    MALFORMED = "malformed"


def demux_nat_t(datagram: bytes) -> tuple[Datagram, bytes]:
    """What a port-4500 datagram is, and its payload (IKE without the marker, ESP whole)."""
    if datagram == NAT_KEEPALIVE:
        return Datagram.KEEPALIVE, b""
    if len(datagram) < ESP_MIN_LEN:
        return Datagram.MALFORMED, b""
    if datagram[:4] == NON_ESP_MARKER:
        return Datagram.IKE, datagram[4:]
    return Datagram.ESP, datagram


IkeSink = Callable[[bytes, Address, bool], None]  # (message, peer, arrived on 4500)
EspSink = Callable[[bytes, Address], None]


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, handler: Callable[[bytes, Address], None]) -> None:
        self.handler = handler
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.handler(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        """ICMP errors (peer gone) surface later as IKE timeouts; nothing to do here."""


class IkeSockets:
    """The two UDP sockets of one VPN gateway address, with counters."""

    def __init__(self, on_ike: IkeSink, on_esp: EspSink) -> None:
        self._on_ike = on_ike
        self._on_esp = on_esp
        self._ike: _Endpoint | None = None
        self._natt: _Endpoint | None = None
        self.keepalives_received = 0
        self.keepalives_sent = 0
        self.malformed = 0
        self.send_errors = 0

    async def open(self, host: str, ike_port: int = IKE_PORT, nat_t_port: int = NAT_T_PORT) -> None:
        """Bind both sockets (port 0 picks free ports, for tests in the host namespace)."""
        loop = asyncio.get_running_loop()
        _, self._ike = await loop.create_datagram_endpoint(
            lambda: _Endpoint(self._from_ike_port), local_addr=(host, ike_port)
        )
        try:
            _, self._natt = await loop.create_datagram_endpoint(
                lambda: _Endpoint(self._from_nat_t_port), local_addr=(host, nat_t_port)
            )
        except OSError:
            self.close()
            raise

    @property
    def ports(self) -> tuple[int, int]:
        """(IKE port, NAT-T port) actually bound."""
        return _port(self._ike), _port(self._natt)

    def _from_ike_port(self, data: bytes, peer: Address) -> None:
        self._on_ike(data, peer, False)

    def _from_nat_t_port(self, data: bytes, peer: Address) -> None:
        kind, payload = demux_nat_t(data)
        if kind is Datagram.ESP:
            self._on_esp(payload, peer)
        elif kind is Datagram.IKE:
            self._on_ike(payload, peer, True)
        elif kind is Datagram.KEEPALIVE:
            self.keepalives_received += 1
        else:
            self.malformed += 1

    def send_ike(self, message: bytes, peer: Address, nat_t: bool) -> None:
        """Send an IKE message from 500, or from 4500 behind the non-ESP marker."""
        if nat_t:
            self._send(self._natt, NON_ESP_MARKER + message, peer)
        else:
            self._send(self._ike, message, peer)

    def send_esp(self, packet: bytes, peer: Address) -> None:
        self._send(self._natt, packet, peer)

    def send_keepalive(self, peer: Address) -> None:
        self.keepalives_sent += 1
        self._send(self._natt, NAT_KEEPALIVE, peer)

    def _send(self, endpoint: _Endpoint | None, data: bytes, peer: Address) -> None:
        if endpoint is None or endpoint.transport is None:
            self.send_errors += 1
            return
        try:
            endpoint.transport.sendto(data, peer)
        except OSError:
            self.send_errors += 1

    def close(self) -> None:
        for endpoint in (self._ike, self._natt):
            if endpoint is not None and endpoint.transport is not None:
                with contextlib.suppress(Exception):
                    endpoint.transport.close()
        self._ike = self._natt = None


def _port(endpoint: _Endpoint | None) -> int:
    if endpoint is None or endpoint.transport is None:
        return 0
    return int(endpoint.transport.get_extra_info("sockname")[1])
