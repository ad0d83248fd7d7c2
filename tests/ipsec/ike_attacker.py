"""Forged IKE traffic for the attack tests: run inside a namespace the test created.

``python ike_attacker.py TARGET_IP KIND [--rate N] [--count N] [--spoof IP:PORT | --bind IP]``

KIND is what each datagram carries (all to UDP 500 of TARGET_IP):

* ``init``: a valid-looking IKE_SA_INIT built with our own sans-I/O initiator, every copy
  with a fresh SPIi and nonce (as many different initiators would send);
* ``payloads``: an IKE_SA_INIT header followed by 340 empty unknown payloads (~1.4 KB);
* ``critical``: an IKE_SA_INIT carrying an unknown payload with the critical bit set;
* ``guess``: whole IKE_SA_INIT + IKE_AUTH exchanges with a wrong PSK (our own initiator,
  from ``--bind IP`` and ``--port``), one after the other; each ends as ``auth-failed``
  (AUTHENTICATION_FAILED came back) or ``no-answer`` (the INIT was ignored).

``--spoof IP:PORT`` sends through a raw socket (IP_HDRINCL) with that forged source, so
answers go to whoever really owns it. ``--bind IP`` sends from a UDP socket on IP (any
port) and counts the answers. ``--mark N`` writes "started" after N datagrams (a test
waits for it). At the end one JSON line goes to stdout: datagrams sent and, with
``--bind``, answers by kind (``cookie``, ``full``, ``unsupported-critical``, ``other``).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import sys
import time
from collections import Counter

from sslvpn.ipsec.ike.config import IkeConfig
from sslvpn.ipsec.ike.constants import ExchangeType, HeaderFlag, NotifyType
from sslvpn.ipsec.ike.events import AuthenticationFailed
from sslvpn.ipsec.ike.messages import (
    IkeHeader,
    KePayload,
    MalformedMessage,
    NoncePayload,
    NotifyPayload,
    Payload,
    UnknownPayload,
    encode_message,
    pull_message,
)
from sslvpn.ipsec.ike.sa import IkeSa, IkeState

IKE = "aes256gcm16-prfsha256-ecp256"
UNKNOWN_TYPE = 200  # not assigned by IANA
EMPTY_PAYLOADS = 340


def peer_config(target: str, source: str = "198.18.0.1") -> IkeConfig:
    """What the tunnel's real peer would offer, except for the PSK."""
    return IkeConfig.build(local_id=source, remote_id=target, psk=b"a wrong guess",
                           ike_proposals=IKE, esp_proposals="aes256gcm16",
                           local_ts=["10.1.0.0/24"], remote_ts=["10.2.0.0/24"])


def init_template(target: str) -> tuple[bytes, int]:
    """An IKE_SA_INIT from our own initiator, and the offset of its nonce data."""
    sa = IkeSa(peer_config(target), ("198.18.0.1", 500), (target, 500), initiator=True)
    sa.initiate(0.0)
    ((data, _),) = sa.datagrams_to_send(0.0)
    nonce = next(p for p in pull_message(data).payloads if isinstance(p, NoncePayload))
    return data, data.index(nonce.data)


def build(kind: str, target: str) -> tuple[bytes, int | None]:
    """The datagram to send and where its nonce is (re-randomised per copy), if it has one."""
    header = IkeHeader(os.urandom(8), bytes(8), 0, ExchangeType.IKE_SA_INIT,
                       HeaderFlag.INITIATOR, 0)
    if kind == "init":
        return init_template(target)
    if kind == "payloads":
        empty: list[Payload] = [UnknownPayload(UNKNOWN_TYPE, False, b"")] * EMPTY_PAYLOADS
        return encode_message(header, empty), None
    template, nonce_at = init_template(target)
    payloads = [*pull_message(template).payloads, UnknownPayload(UNKNOWN_TYPE, True, b"x")]
    return encode_message(header, payloads), nonce_at


def classify(answer: bytes) -> str:
    try:
        message = pull_message(answer)
    except MalformedMessage:
        return "other"
    notes = {p.notify_type for p in message.payloads if isinstance(p, NotifyPayload)}
    if NotifyType.COOKIE in notes:
        return "cookie"
    if NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD in notes:
        return "unsupported-critical"
    if any(isinstance(p, KePayload) for p in message.payloads):
        return "full"
    return "other"


def guess(target: str, source: tuple[str, int], attempts: int) -> Counter[str]:
    """Full exchanges with a wrong PSK from ``source``; how each one ended."""
    outcomes: Counter[str] = Counter()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(source)
        for _ in range(attempts):
            sa = IkeSa(peer_config(target, source[0]), source, (target, 500), initiator=True)
            sa.initiate(time.monotonic())
            outcome = "no-answer"
            while outcome == "no-answer":
                for data, to in sa.datagrams_to_send(time.monotonic()):
                    sock.sendto(data, to)
                if not select.select([sock], [], [], 1.5)[0]:
                    break
                data, sender = sock.recvfrom(65535)
                sa.receive_datagram(data, sender, time.monotonic())
                while (event := sa.next_event()) is not None:
                    if isinstance(event, AuthenticationFailed):
                        outcome = "auth-failed"
                if sa.state is IkeState.CLOSED and outcome == "no-answer":
                    outcome = "other"
            outcomes[outcome] += 1
    return outcomes


def udp_header(source: tuple[str, int], target: str, payload: bytes) -> bytes:
    """IPv4 + UDP headers for IP_HDRINCL (the kernel fills in IP length and checksum)."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0x4000, 64, socket.IPPROTO_UDP, 0,
                     socket.inet_aton(source[0]), socket.inet_aton(target))
    return ip + struct.pack("!HHHH", source[1], 500, 8 + len(payload), 0)  # checksum 0: none


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("kind", choices=["init", "payloads", "critical", "guess"])
    parser.add_argument("--rate", type=float, default=1000.0, help="datagrams per second")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--spoof", help="forged source IP:PORT (raw socket)")
    parser.add_argument("--bind", help="send from this local IP and count the answers")
    parser.add_argument("--port", type=int, default=0, help="local port for --bind")
    parser.add_argument("--mark", type=int, default=0,
                        help="write a 'started' line once this many datagrams are out")
    parser.add_argument("--linger", type=float, default=1.0, help="seconds to wait for answers")
    args = parser.parse_args()
    if args.kind == "guess":
        outcomes = guess(args.target, (args.bind, args.port), args.count)
        sys.stdout.write(json.dumps({"sent": args.count, **outcomes}) + "\n")
        return
    data, nonce_at = build(args.kind, args.target)
    sock: socket.socket | None = None
    raw: socket.socket | None = None
    spoof: tuple[str, int] | None = None
    if args.spoof:
        host, port = args.spoof.rsplit(":", 1)
        spoof = (host, int(port))
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((args.bind or "0.0.0.0", args.port))  # noqa: S104 - in the test's namespace
        sock.setblocking(False)
    answers: Counter[str] = Counter()

    def drain(wait: float) -> None:
        """Count answers until ``wait`` seconds have passed (it paces the sending too)."""
        until = time.monotonic() + wait
        if sock is None:
            time.sleep(wait)  # pacing only: a forged source gets no answers here
            return
        while select.select([sock], [], [], max(0.0, until - time.monotonic()))[0]:
            try:
                answers[classify(sock.recv(65535))] += 1
            except OSError:
                return

    start = time.monotonic()
    for sent in range(args.count):
        packet = bytearray(data)
        packet[0:8] = os.urandom(8)
        if nonce_at is not None:
            packet[nonce_at:nonce_at + 32] = os.urandom(32)
        if raw is not None and spoof is not None:
            raw.sendto(udp_header(spoof, args.target, bytes(packet)) + packet, (args.target, 0))
        elif sock is not None:
            sock.sendto(bytes(packet), (args.target, 500))
        if sent + 1 == args.mark:
            sys.stdout.write("started\n")
            sys.stdout.flush()
        ahead = start + (sent + 1) / args.rate - time.monotonic()
        drain(max(0.0, ahead))
    drain(args.linger)
    summary = {"sent": args.count, "seconds": round(time.monotonic() - start, 2), **answers}
    sys.stdout.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
