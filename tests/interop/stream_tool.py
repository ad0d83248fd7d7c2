"""A tiny TCP source/sink for interop tests: moves bytes and proves them by SHA-256.

Run as a server in the VPC namespace (``serve HOST PORT``) and as a client in the client
namespace (``put|get|putfor HOST PORT AMOUNT``). ``put N`` sends N random bytes and checks
the server's hash of what arrived; ``get N`` receives N bytes after the server announced
their hash; ``putfor S`` sends for S seconds, then half-closes. The client prints one JSON
line: ok, bytes, seconds, mbps.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
import time

CHUNK = 256 * 1024


def _recv_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        byte = sock.recv(1)
        if not byte:
            break
        line += byte
    return line.strip()


def _handle(conn: socket.socket) -> None:
    with conn:
        command, _, arg = _recv_line(conn).partition(b" ")
        if command == b"PUT":
            digest, total = hashlib.sha256(), 0
            while True:
                data = conn.recv(CHUNK)
                if not data:
                    break
                digest.update(data)
                total += len(data)
            conn.sendall(f"{digest.hexdigest()} {total}\n".encode())
        elif command == b"GET":
            payload = os.urandom(int(arg))
            conn.sendall(hashlib.sha256(payload).hexdigest().encode() + b"\n")
            conn.sendall(payload)


def serve(host: str, port: int) -> None:
    with socket.create_server((host, port), reuse_port=False) as server:
        print("ready", flush=True)  # noqa: T201
        while True:
            conn, _ = server.accept()
            threading.Thread(target=_handle, args=(conn,), daemon=True).start()


def _put(sock: socket.socket, *, size: int | None, seconds: float | None) -> tuple[bool, int]:
    sock.sendall(b"PUT -\n")
    digest, total = hashlib.sha256(), 0
    block = os.urandom(CHUNK)
    deadline = time.monotonic() + seconds if seconds is not None else None
    while True:
        if size is not None and total >= size:
            break
        if deadline is not None and time.monotonic() >= deadline:
            break
        piece = block if size is None else block[: min(CHUNK, size - total)]
        # vary the content so reordering or duplication would change the hash
        piece = total.to_bytes(8, "big") + piece[8:]
        sock.sendall(piece)
        digest.update(piece)
        total += len(piece)
    sock.shutdown(socket.SHUT_WR)
    answer = _recv_line(sock).decode().split()
    return answer == [digest.hexdigest(), str(total)], total


def _get(sock: socket.socket, size: int) -> tuple[bool, int]:
    sock.sendall(f"GET {size}\n".encode())
    expected = _recv_line(sock).decode()
    digest, total = hashlib.sha256(), 0
    while True:
        data = sock.recv(CHUNK)
        if not data:
            break
        digest.update(data)
        total += len(data)
    return digest.hexdigest() == expected and total == size, total


def client(mode: str, host: str, port: int, amount: str) -> dict[str, object]:
    started = time.monotonic()
    with socket.create_connection((host, port), timeout=60) as sock:
        if mode == "put":
            ok, total = _put(sock, size=int(amount), seconds=None)
        elif mode == "putfor":
            ok, total = _put(sock, size=None, seconds=float(amount))
        else:
            ok, total = _get(sock, int(amount))
    seconds = time.monotonic() - started
    return {"ok": ok, "bytes": total, "seconds": round(seconds, 3),
            "mbps": round(total * 8 / seconds / 1e6, 1)}


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        print(json.dumps(client(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])))  # noqa: T201
