"""One ``ClientSession`` on a UDP socket, for interop tests against a real openvpn 2.6 server.

Run inside a network namespace: ``python -m tests.openvpn.core_client CONFIG.json``. It
connects to the server, loses the first outgoing datagram of the opcode named ``drop`` (if
any) as a lossy network would, and once the session is up sends ICMP echo requests through
the tunnel to the server's tunnel address until one is answered; then it exits politely.
One JSON line per event goes to the log named in the config, and a final ``stopped`` line
says which opcodes were sent and what was dropped. No TUN, no runtime: the protocol core
alone against the real server.
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

from sslvpn.openvpn.client import ClientConfig, ClientSession
from sslvpn.openvpn.constants import Opcode
from sslvpn.openvpn.events import SessionClosed, SessionEstablished, TunnelPacket
from sslvpn.openvpn.static_key import parse_static_key, parse_tls_crypt_v2_client_key
from sslvpn.openvpn.tls import TlsContext, TlsCredentials
from sslvpn.openvpn.tls_wrap import TlsCryptCodec

ECHO_ID = 0x5B1


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    data += b"\0" * (len(data) % 2)
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(source: str, destination: str, sequence: int) -> bytes:
    """An IPv4 ICMP echo request with a valid header and ICMP checksum."""
    icmp = struct.pack("!BBHHH", 8, 0, 0, ECHO_ID, sequence) + b"sslvpn-core-client"
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), sequence, 0, 64, 1, 0,
                         ipaddress.IPv4Address(source).packed,
                         ipaddress.IPv4Address(destination).packed)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + icmp


def is_echo_reply(packet: bytes) -> bool:
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != 1:
        return False
    ihl = (packet[0] & 0x0F) * 4
    return packet[ihl] == 0 and struct.unpack("!H", packet[ihl + 4 : ihl + 6])[0] == ECHO_ID


def _client_config(conf: dict[str, Any]) -> ClientConfig:
    folder = Path(conf["dir"])
    ca = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((folder / "client.crt").read_bytes())
    key = load_pem_private_key((folder / "client.key").read_bytes(), None)
    tls = TlsContext(TlsCredentials(cert, key, (ca,)), server=False)  # type: ignore[arg-type]
    if conf["wrap"] == "tls-crypt-v2":
        client_key, wkc = parse_tls_crypt_v2_client_key((folder / "tc2-client.key").read_text())
        return ClientConfig(tls=tls, codec=TlsCryptCodec(client_key, server=False), wkc=wkc)
    tc_key = parse_static_key((folder / "tc.key").read_text())
    return ClientConfig(tls=tls, codec=TlsCryptCodec(tc_key, server=False))


def _tunnel_addresses(options: list[str]) -> tuple[str, str]:
    """Our address from the pushed ``ifconfig`` and the server's from ``route-gateway``."""
    own = gateway = ""
    for option in options:
        words = option.split()
        if words[0] == "ifconfig" and len(words) > 1:
            own = words[1]
        elif words[0] == "route-gateway" and len(words) > 1:
            gateway = words[1]
    return own, gateway


def run(conf: dict[str, Any]) -> None:
    session = ClientSession(_client_config(conf), time.monotonic())
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((conf["server"], conf["port"]))
    log = Path(conf["log"]).open("a")
    drop = Opcode[conf["drop"]] if conf.get("drop") else None
    sent: list[str] = []
    dropped: list[str] = []
    addresses: tuple[str, str] | None = None
    sequence = 0
    next_echo = 0.0
    end = time.monotonic() + conf["seconds"]

    def note(kind: str, **fields: object) -> None:
        log.write(json.dumps({"event": kind, **fields}) + "\n")
        log.flush()

    while time.monotonic() < end and not session.closed:
        now = time.monotonic()
        if addresses is not None and now >= next_echo:
            sequence += 1
            next_echo = now + 1.0
            session.send_packet(echo_request(*addresses, sequence), now)
        for datagram in session.datagrams_to_send(now):
            opcode = Opcode(datagram[0] >> 3)
            if opcode is drop and opcode.name not in dropped:
                dropped.append(opcode.name)
                continue
            sent.append(opcode.name)
            sock.send(datagram)
        for event in iter(session.next_event, None):
            if isinstance(event, SessionEstablished):
                addresses = _tunnel_addresses(session.pushed_options)
                note("SessionEstablished", cipher=event.cipher, key_derivation=event.key_derivation,
                     tls_version=event.tls_version, addresses=list(addresses))
            elif isinstance(event, TunnelPacket):
                if is_echo_reply(event.ip_packet):
                    note("EchoReply")
                    session.close()
            elif isinstance(event, SessionClosed):
                note("SessionClosed", reason=event.reason)
        timer = session.get_timer()
        wait = 0.2 if timer is None else min(0.2, max(0.0, timer - time.monotonic()))
        readable, _, _ = select.select([sock], [], [], wait)
        now = time.monotonic()
        if readable:
            session.receive_datagram(sock.recv(65535), now)
        timer = session.get_timer()
        if timer is not None and timer <= now:
            session.handle_timer(now)
    for datagram in session.datagrams_to_send(time.monotonic()):
        sock.send(datagram)  # the goodbye (EXIT or OCC exit)
    note("stopped", sent=sent, dropped=dropped, drops=dict(session.drops))
    log.close()


if __name__ == "__main__":
    run(json.loads(Path(sys.argv[1]).read_text()))
