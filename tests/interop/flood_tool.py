"""Attack traffic for the listener tests and the bench, run inside a namespace.

    flood_tool.py udp SRC DST PORT FILE SPORT
        send each packet of FILE (u16 length + bytes, repeated) once, from a raw socket,
        with the forged source address SRC and source ports SPORT, SPORT+1, ...; SRC may be
        "random" (a random 198.18.128.0/17 address per packet); prints how many were sent
    flood_tool.py tcp DST PORT FILE CONCURRENCY SRC [SRC ...]
        keep CONCURRENCY connections open to DST:PORT, spread over the source addresses,
        each sending the first packet of FILE (a framed reset) and then nothing; whenever
        the server closes one, open another at once; prints "ready" once the first
        connections are out, and on stdin's end the number of connections made

Standard library only: the test builds the packets with the project's own client core.
"""

from __future__ import annotations

import ipaddress
import random
import selectors
import socket
import struct
import sys
import threading
from pathlib import Path


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def packets(path: Path) -> list[bytes]:
    data, out, offset = path.read_bytes(), [], 0
    while offset < len(data):
        (size,) = struct.unpack_from("!H", data, offset)
        out.append(data[offset + 2 : offset + 2 + size])
        offset += 2 + size
    return out


def ip_udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """An IPv4 header (the kernel fills length, id and checksum) and a UDP header with no
    checksum (allowed over IPv4)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64,
                         socket.IPPROTO_UDP, 0, socket.inet_aton(src), socket.inet_aton(dst))
    return header + udp


def send_udp(src: str, dst: str, port: int, path: Path, sport: int) -> None:
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    pool = ipaddress.ip_network("198.18.128.0/17")
    sent = 0
    for i, payload in enumerate(packets(path)):
        source = src
        if src == "random":
            source = str(pool[random.randrange(1, pool.num_addresses - 1)])  # noqa: S311
        raw.sendto(ip_udp(source, dst, (sport + i) % 65536 or 1, port, payload), (dst, 0))
        sent += 1
    say(str(sent))


def flood_tcp(dst: str, port: int, path: Path, concurrency: int, sources: list[str]) -> None:
    frame = struct.pack("!H", len(packets(path)[0])) + packets(path)[0]
    selector = selectors.DefaultSelector()
    made = [0]
    stop = threading.Event()

    def open_one(n: int) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((sources[n % len(sources)], 0))
        try:
            sock.connect((dst, port))
        except BlockingIOError:
            pass
        except OSError:
            sock.close()
            return
        selector.register(sock, selectors.EVENT_WRITE, n)
        made[0] += 1

    for n in range(concurrency):
        open_one(n)
    say("ready")
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    while not stop.is_set():
        for key, events in selector.select(0.2):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if events & selectors.EVENT_WRITE:
                try:
                    sock.send(frame)
                except OSError:
                    selector.unregister(sock)
                    sock.close()
                    open_one(key.data)
                    continue
                selector.modify(sock, selectors.EVENT_READ, key.data)
                continue
            try:
                if sock.recv(65536):
                    continue  # the server's reset: keep the connection silent and open
            except OSError:
                pass
            selector.unregister(sock)
            sock.close()
            open_one(key.data)
    say(str(made[0]))


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "udp":
        send_udp(args[0], args[1], int(args[2]), Path(args[3]), int(args[4]))
    else:
        flood_tcp(args[0], int(args[1]), Path(args[2]), int(args[3]), args[4:])


if __name__ == "__main__":
    main()
