"""The bench's namespace lab: the tests' ``NetnsLab`` under the bench's own prefix.

The bench owns the ``sb`` prefix: every namespace is ``sb-<role>-<tag>`` and every veth
``sb<n><a|b><tag>``, so nothing collides with the tests or other helpers. Creating, linking,
spawning and the guaranteed removal (``Lab.close``, which the driver calls from ``finally``
and from SIGTERM/SIGINT handlers) are ``tests.netns``'s; this module adds only what the bench
needs on top: IPv6 off in every namespace and stopping many processes at once. Nothing here
touches the host namespace's routes, interfaces or sysctls.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence

from tests.netns import Namespace, NetnsLab, file_contains, wait_until

__all__ = ["PREFIX", "Lab", "Namespace", "file_contains", "wait_until"]

PREFIX = "sb"


class Lab(NetnsLab):
    """The namespaces, links and processes of one bench run; ``close`` removes all of them."""

    def __init__(self, prefix: str = PREFIX) -> None:
        super().__init__(prefix)

    def namespace(self, role: str) -> Namespace:
        """Create ``<prefix>-<role>-<tag>`` with loopback up and IPv6 off (no stray traffic)."""
        ns = super().namespace(role)
        ns.run("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
               "net.ipv6.conf.default.disable_ipv6=1")
        return ns

    def stop_many(self, procs: Sequence[subprocess.Popen[bytes]], timeout: float = 10) -> None:
        """SIGTERM all at once (polite exits overlap), then reap each."""
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            self.stop(proc, timeout)
