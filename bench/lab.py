"""Network namespaces and processes of one benchmark run, and their guaranteed removal.

The bench owns the ``sb`` prefix: every namespace is ``sb-<role>-<tag>`` and every veth
``sb<n><a|b><tag>``, so nothing collides with the tests or other helpers. ``Lab.close``
kills the processes the bench started (by pid, process group first) and deletes its
namespaces; the driver calls it from ``finally`` and from SIGTERM/SIGINT handlers. Nothing
here touches the host namespace's routes, interfaces or sysctls.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

PREFIX = "sb"


class Namespace:
    """One network namespace: run commands in it and start processes in it."""

    def __init__(self, lab: Lab, name: str) -> None:
        self.lab = lab
        self.name = name

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        """Run a command inside the namespace and return its stdout."""
        result = subprocess.run(
            ["ip", "netns", "exec", self.name, *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"[{self.name}] {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def spawn(self, args: Sequence[str], *, log: Path | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start a process (own session) inside the namespace; the lab stops it on close."""
        out = log.open("ab") if log is not None else None
        try:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.name, *args],
                stdin=subprocess.DEVNULL,
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


class Lab:
    """The namespaces, links and processes of one bench run; ``close`` removes all of them."""

    def __init__(self, prefix: str = PREFIX) -> None:
        self.prefix = prefix
        self.tag = secrets.token_hex(3)
        self.namespaces: list[Namespace] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self._links = 0

    def namespace(self, role: str) -> Namespace:
        """Create ``<prefix>-<role>-<tag>`` with loopback up and IPv6 off."""
        name = f"{self.prefix}-{role}-{self.tag}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        ns = Namespace(self, name)
        self.namespaces.append(ns)
        ns.run("ip", "link", "set", "lo", "up")
        ns.run("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
               "net.ipv6.conf.default.disable_ipv6=1")
        return ns

    def link(self, a: Namespace, a_address: str, b: Namespace, b_address: str) -> tuple[str, str]:
        """A veth pair between two namespaces with one address (CIDR) at each end."""
        self._links += 1
        name_a = f"{self.prefix}{self._links}a{self.tag}"
        name_b = f"{self.prefix}{self._links}b{self.tag}"
        subprocess.run(
            ["ip", "link", "add", name_a, "netns", a.name, "type", "veth",
             "peer", "name", name_b, "netns", b.name],
            check=True, capture_output=True,
        )
        for ns, ifname, address in ((a, name_a, a_address), (b, name_b, b_address)):
            ns.run("ip", "addr", "add", address, "dev", ifname)
            ns.run("ip", "link", "set", ifname, "up")
        return name_a, name_b

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10) -> int | None:
        """SIGTERM one process we started (its whole session), SIGKILL if it lingers."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        with contextlib.suppress(ValueError):
            self.processes.remove(proc)
        return proc.returncode

    def stop_many(self, procs: Sequence[subprocess.Popen[bytes]], timeout: float = 10) -> None:
        """SIGTERM all at once (polite exits overlap), then reap each."""
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            self.stop(proc, timeout)

    def close(self) -> None:
        """Kill our processes, then delete our namespaces (and with them their veths)."""
        for proc in reversed(list(self.processes)):
            with contextlib.suppress(Exception):
                self.stop(proc, timeout=5)
        for ns in reversed(self.namespaces):
            pids = subprocess.run(["ip", "netns", "pids", ns.name], capture_output=True,
                                  text=True, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, check=False)
        self.namespaces.clear()
        self.processes.clear()


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
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
