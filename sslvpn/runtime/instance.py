"""One gateway per data folder: `sslvpn serve` holds an exclusive lock on a file in the data
folder for its whole life, taken before it opens the store or touches the control socket, the
TUN or nftables.

A second ``serve`` on the same folder finds the lock taken and stops at once, naming the
holder (whose pid is in the file), so it never closes the running gateway's session records,
removes its control socket or deletes its SNAT table. The lock is ``flock``: the kernel drops
it when the holder dies, even by SIGKILL, so a restart after a crash simply takes it, and a
child process (``ip``, ``nft``) never inherits it. The file itself stays: removing a lock file
races with a process that has just opened it. ``stop_on_signals`` is how the running
instance (a gateway, or the supervisor of its workers) hears SIGTERM and SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

PID_WAIT = 1.0  # seconds a holder that has just taken the lock may take to write its pid


class AlreadyServing(RuntimeError):
    """Another process holds the data folder's lock."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        super().__init__(f"another gateway (pid {pid if pid is not None else 'unknown'}) "
                         "is serving this data folder")


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold the lock at ``path`` for the block, or raise `AlreadyServing` at once."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyServing(_holder(fd)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> int | None:
    """The pid the holder wrote (it writes it right after taking the lock)."""
    deadline = time.monotonic() + PID_WAIT
    while True:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return int(text)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


@contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """Call ``stop`` on SIGTERM or SIGINT while inside (on the running event loop)."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
    try:
        yield
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
