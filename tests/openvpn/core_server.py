"""A one-client UDP server around ``ServerSession`` for interop tests against real openvpn.

Run inside a network namespace: ``python -m tests.openvpn.core_server CONFIG.json``. It
binds the given address, runs the acceptor and one session with a blocking select loop
(time from the monotonic clock), answers ICMP echo requests that arrive through the
tunnel, and appends one JSON line per event to the log file named in the config. No TUN,
no runtime: this checks the protocol core alone against the real client.
"""

from __future__ import annotations

import ipaddress
import json
import select
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from sslvpn.openvpn.endpoint import Timing
from sslvpn.openvpn.events import KeysRenegotiated, PeerVerified, TunnelPacket
from sslvpn.openvpn.push import PushConfig
from sslvpn.openvpn.server import AcceptorConfig, CreateSession, Reply, ServerAcceptor
from sslvpn.openvpn.session import ServerConfig, ServerSession
from sslvpn.openvpn.static_key import parse_static_key, parse_tls_crypt_v2_server_key
from sslvpn.openvpn.tls import TlsContext, TlsCredentials
from sslvpn.openvpn.tls_wrap import ServerWrapKeys

PUSH = PushConfig(
    ifconfig=ipaddress.IPv4Interface("10.8.0.2/24"),
    route_gateway=ipaddress.IPv4Address("10.8.0.1"),
    peer_id=3,
    routes=(ipaddress.IPv4Network("10.10.0.0/24"),),
)


def echo_reply(packet: bytes) -> bytes | None:
    """Turn an IPv4 ICMP echo request into its reply (swap addresses, fix the checksum)."""
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != 1:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if packet[ihl] != 8:
        return None
    out = bytearray(packet)
    out[12:16], out[16:20] = packet[16:20], packet[12:16]
    out[ihl], out[ihl + 2 : ihl + 4] = 0, b"\0\0"
    body = bytes(out[ihl:]) + b"\0" * ((len(out) - ihl) % 2)
    total = sum(struct.unpack(f"!{len(body) // 2}H", body))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    out[ihl + 2 : ihl + 4] = struct.pack("!H", ~total & 0xFFFF)
    return bytes(out)


def _server_config(conf: dict[str, Any]) -> tuple[ServerConfig, ServerWrapKeys]:
    folder = Path(conf["dir"])
    ca = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((folder / "server.crt").read_bytes())
    key = load_pem_private_key((folder / "server.key").read_bytes(), None)
    tls = TlsContext(TlsCredentials(cert, key, (ca,)), server=True)  # type: ignore[arg-type]
    if conf["wrap"] == "tls-crypt-v2":
        raw = parse_tls_crypt_v2_server_key((folder / "tc2-server.key").read_text())
        wrap = ServerWrapKeys.tls_crypt_v2(raw)
    else:
        wrap = ServerWrapKeys.tls_crypt(parse_static_key((folder / "tc.key").read_text()))
    timing = Timing(reneg_seconds=conf.get("reneg"))
    config = ServerConfig(
        tls=tls, allow_ekm=conf.get("ekm", True), timing=timing,
        data_ciphers=tuple(conf.get("ciphers", ["AES-256-GCM"])),
    )
    return config, wrap


def serve(conf: dict[str, Any]) -> None:
    config, wrap = _server_config(conf)
    acceptor = ServerAcceptor(AcceptorConfig(wrap=wrap))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((conf["address"], conf["port"]))
    log = Path(conf["log"]).open("a")
    session: ServerSession | None = None
    peer: tuple[str, int] = ("", 0)
    end = time.monotonic() + conf["seconds"]

    def note(kind: str, **fields: object) -> None:
        log.write(json.dumps({"event": kind, **fields}) + "\n")
        log.flush()

    note("listening")
    while time.monotonic() < end and not (session is not None and session.closed):
        timer = None if session is None else session.get_timer()
        wait = 0.2 if timer is None else min(0.2, max(0.0, timer - time.monotonic()))
        readable, _, _ = select.select([sock], [], [], wait)
        now = time.monotonic()
        if readable:
            data, address = sock.recvfrom(65535)
            if session is None:
                decision = acceptor.receive(data, address, now)
                if isinstance(decision, Reply):
                    sock.sendto(decision.data, address)
                elif isinstance(decision, CreateSession):
                    session, peer = ServerSession(config, decision, now), address
            elif address == peer:
                session.receive_datagram(data, now)
        if session is None:
            continue
        timer = session.get_timer()
        if timer is not None and timer <= now:
            session.handle_timer(now)
        while True:
            for datagram in session.datagrams_to_send(now):
                sock.sendto(datagram, peer)
            event = session.next_event()
            if event is None:
                break
            if isinstance(event, PeerVerified):
                session.accept(PUSH)
                note("PeerVerified", subject=event.certificate.subject.rfc4514_string())
            elif isinstance(event, TunnelPacket):
                reply = echo_reply(event.ip_packet)
                if reply is not None:
                    session.send_packet(reply, now)
                    note("EchoAnswered")
            elif isinstance(event, KeysRenegotiated):
                note("KeysRenegotiated", key_id=event.key_id)
            else:
                note(type(event).__name__, **{k: str(v) for k, v in vars(event).items()})
    note("stopped", drops=dict(session.drops) if session else {})
    log.close()


if __name__ == "__main__":
    serve(json.loads(Path(sys.argv[1]).read_text()))
