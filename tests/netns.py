"""Network namespaces for interop tests (and the bench): create, run, always clean up.

A ``NetnsLab`` names every namespace ``<prefix>-<role>-<random>`` so parallel runs and other
helpers never collide, links namespaces with veth pairs, starts processes inside them and, on
``close()`` (call it from a fixture finalizer), kills the processes it started (by pid) and
deletes its namespaces, which also removes their veths. ``Namespace.set_udp_loss`` makes a
namespace's traffic with a UDP port lossy. Nothing here touches the host namespace's routes
or interfaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

LOSS_TABLE = "netns_loss"
LOSS_RULES = """table inet {table} {{
    chain sent {{
        type filter hook output priority 0; policy accept;
        udp dport {port} numgen random mod 100 < {percent} counter drop
    }}
    chain received {{
        type filter hook input priority 0; policy accept;
        udp sport {port} numgen random mod 100 < {percent} counter drop
    }}
}}
"""


class Namespace:
    """One network namespace: run commands in it, start processes in it."""

    def __init__(self, lab: NetnsLab, name: str) -> None:
        self.lab = lab
        self.name = name

    def run(
        self, *args: str, check: bool = True, timeout: float = 30, stdin: str | None = None
    ) -> str:
        """Run a command inside the namespace and return its stdout."""
        result = subprocess.run(
            ["ip", "netns", "exec", self.name, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"[{self.name}] {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def ok(self, *args: str, timeout: float = 30) -> bool:
        """Whether the command succeeds inside the namespace."""
        result = subprocess.run(
            ["ip", "netns", "exec", self.name, *args],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        return result.returncode == 0

    def set_udp_loss(self, percent: int, port: int) -> None:
        """Drop ``percent`` % of the UDP datagrams this namespace sends to or receives from
        ``port``, each datagram on its own draw (nftables ``numgen random``: the kernel here
        has no netem). 0 removes the rules; ``udp_loss_dropped`` counts what they dropped."""
        rules = f"add table inet {LOSS_TABLE}\ndelete table inet {LOSS_TABLE}\n"
        if percent:
            rules += LOSS_RULES.format(table=LOSS_TABLE, port=port, percent=percent)
        self.run("nft", "-f", "-", stdin=rules)

    def udp_loss_dropped(self) -> int:
        """Datagrams the ``set_udp_loss`` rules dropped so far, both directions."""
        listing = json.loads(self.run("nft", "-j", "list", "table", "inet", LOSS_TABLE))
        return sum(expr["counter"]["packets"] for item in listing["nftables"]
                   for expr in item.get("rule", {}).get("expr", ()) if "counter" in expr)

    def spawn(
        self,
        args: Sequence[str],
        *,
        log: Path | None = None,
        stdin: int | IO[bytes] | None = subprocess.DEVNULL,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a process inside the namespace; the lab kills it on close."""
        out = log.open("ab") if log is not None else None
        try:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.name, *args],
                stdin=stdin,
                stdout=out if out is not None else subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        finally:
            if out is not None:
                out.close()
        self.lab.processes.append(proc)
        return proc


class NetnsLab:
    """The namespaces, links and processes of one test; ``close`` removes all of them."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.tag = secrets.token_hex(3)
        self.namespaces: list[Namespace] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self._links = 0

    def namespace(self, role: str) -> Namespace:
        """Create ``<prefix>-<role>-<tag>`` with loopback up."""
        name = f"{self.prefix}-{role}-{self.tag}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        ns = Namespace(self, name)
        self.namespaces.append(ns)
        ns.run("ip", "link", "set", "lo", "up")
        return ns

    def link(self, a: Namespace, a_address: str, b: Namespace, b_address: str) -> tuple[str, str]:
        """A veth pair between two namespaces with one address (CIDR) at each end."""
        name_a, name_b = self._veth(a, b)
        for ns, ifname, address in ((a, name_a, a_address), (b, name_b, b_address)):
            ns.run("ip", "addr", "add", address, "dev", ifname)
            ns.run("ip", "link", "set", ifname, "up")
        return name_a, name_b

    def bridge(self, ns: Namespace) -> str:
        """A bridge inside ``ns``: one shared segment that ``attach`` plugs namespaces into."""
        self._links += 1
        name = f"{self.prefix}br{self._links}"
        ns.run("ip", "link", "add", name, "type", "bridge")
        ns.run("ip", "link", "set", name, "up")
        return name

    def attach(self, ns: Namespace, address: str, segment: Namespace, bridge: str) -> str:
        """A veth from ``ns`` (with ``address``, a CIDR) into ``bridge`` inside ``segment``."""
        name_a, name_b = self._veth(ns, segment)
        ns.run("ip", "addr", "add", address, "dev", name_a)
        ns.run("ip", "link", "set", name_a, "up")
        segment.run("ip", "link", "set", name_b, "master", bridge, "up")
        return name_a

    def _veth(self, a: Namespace, b: Namespace) -> tuple[str, str]:
        """A veth pair, one end in each namespace; returns the two interface names."""
        self._links += 1
        # veth names are at most 15 characters: prefix(2) + link + a/b + tag(6)
        name_a = f"{self.prefix}{self._links}a{self.tag}"
        name_b = f"{self.prefix}{self._links}b{self.tag}"
        subprocess.run(
            ["ip", "link", "add", name_a, "netns", a.name, "type", "veth",
             "peer", "name", name_b, "netns", b.name],
            check=True,
            capture_output=True,
        )
        return name_a, name_b

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10) -> int | None:
        """SIGTERM one process we started (its session), SIGKILL if it lingers."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        return proc.returncode

    def close(self) -> None:
        """Kill our processes, then delete our namespaces (and with them their veths)."""
        for proc in reversed(self.processes):
            with contextlib.suppress(Exception):
                self.stop(proc, timeout=5)
        for ns in reversed(self.namespaces):
            for pid in subprocess.run(
                ["ip", "netns", "pids", ns.name], capture_output=True, text=True, check=False
            ).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, check=False)
        self.namespaces.clear()
        self.processes.clear()


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass (a bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def file_contains(path: Path, text: str) -> Callable[[], bool]:
    """A condition for ``wait_until``: ``text`` appears in the file at ``path``."""

    def check() -> bool:
        try:
            return text in path.read_text(errors="replace")
        except FileNotFoundError:
            return False

    return check
