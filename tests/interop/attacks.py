"""Attack helpers shared by the listener tests and the bench's attack phase.

Packets come from the project's own client core with a leaked key (a certificate row's
tls-crypt-v2 client key, or the gateway's tls-crypt key); ``flood_tool.py`` sends them from
inside a namespace (raw socket, forged source) or keeps a TCP flood going. A victim address
on a namespace's link counts with nft what a server reflects to it.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from pathlib import Path

from sslvpn.config import DataPaths
from sslvpn.openvpn.client import ClientConfig, ClientSession
from sslvpn.store import db, queries
from tests.netns import Namespace
from tests.runtime.loopback import client_config

FLOOD_TOOL = str(Path(__file__).with_name("flood_tool.py"))
IP_UDP_HEADERS = 28


def leaked_config(data_dir: Path, serial: str, *, v2: bool, tcp: bool = False) -> ClientConfig:
    """A client configuration from the certificate ``serial``: its tls-crypt-v2 client key,
    or the gateway's tls-crypt key."""
    paths = DataPaths(data_dir)
    engine = db.open_engine(f"sqlite:///{paths.database}")
    try:
        with db.session(engine, write=False) as s:
            row = queries.get_certificate(s, serial=serial)
    finally:
        engine.dispose()
    return client_config(paths, row, v2=v2, tcp=tcp)


def resets(config: ClientConfig, count: int) -> list[bytes]:
    """``count`` first packets, each of a new client (its own session id)."""
    return [ClientSession(config, time.time()).datagrams_to_send(time.time())[0]
            for _ in range(count)]


def write_packets(path: Path, packets: list[bytes]) -> Path:
    path.write_bytes(b"".join(struct.pack("!H", len(p)) + p for p in packets))
    return path


def link_of(ns: Namespace, address: str) -> str:
    """The interface holding ``address`` in ``ns``."""
    for line in ns.run("ip", "-o", "-4", "addr", "show").splitlines():
        if f" {address}/" in line:
            return line.split()[1]
    raise AssertionError(f"no link with {address}")


def add_victim(ns: Namespace, beside: str, victim: str, server_port: int) -> None:
    """Put ``victim`` on the link of ``beside`` and count (then drop) what servers send it."""
    ns.run("ip", "addr", "add", f"{victim}/32", "dev", link_of(ns, beside))
    ns.run("nft", "-f", "-", stdin=(
        "table ip victim {\n chain in {\n  type filter hook input priority 0;\n"
        f"  ip daddr {victim} udp sport {server_port} counter drop\n }}\n}}\n"))


def victim_count(ns: Namespace) -> tuple[int, int]:
    """Packets and bytes (IP) servers sent to the victim so far."""
    listing = json.loads(ns.run("nft", "-j", "list", "table", "ip", "victim"))
    for item in listing["nftables"]:
        for part in item.get("rule", {}).get("expr", []):
            if "counter" in part:
                return part["counter"]["packets"], part["counter"]["bytes"]
    raise AssertionError("no victim counter")


def forge_udp(ns: Namespace, source: str, server: str, port: int, packets: Path,
              first_port: int) -> int:
    """Send the packets from ``ns`` with the forged ``source`` ("random": any of
    198.18.128.0/17); returns how many were sent."""
    return int(ns.run(sys.executable, FLOOD_TOOL, "udp", source, server, str(port),
                      str(packets), str(first_port), timeout=300))


def start_tcp_flood(ns: Namespace, server: str, port: int, packets: Path, concurrency: int,
                    sources: list[str]) -> subprocess.Popen[str]:
    """Keep ``concurrency`` TCP connections coming from ``sources``, each sending the first
    packet of ``packets``; running once this returns. Stop it with ``stop_tcp_flood``."""
    flood = subprocess.Popen(
        ["ip", "netns", "exec", ns.name, sys.executable, FLOOD_TOOL, "tcp", server, str(port),
         str(packets), str(concurrency), *sources],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
    ns.lab.processes.append(flood)  # type: ignore[arg-type]  # killed by the lab if left
    assert flood.stdout is not None
    if flood.stdout.readline().strip() != "ready":
        raise RuntimeError("the TCP flood did not start")
    return flood


def stop_tcp_flood(flood: subprocess.Popen[str]) -> int:
    """End the flood; returns how many connections it made."""
    out, _ = flood.communicate("", timeout=30)
    return int(out.strip() or 0)
