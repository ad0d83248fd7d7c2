"""`sslvpn serve --workers N`: one gateway process per core, under a supervisor.

A node's client pool is cut into one slice per worker with the same machinery that cuts the
fleet pool into nodes (`sslvpn.net.subpools.worker_slices`): each worker is a whole gateway
(its own UDP and TCP sockets on the shared port with ``SO_REUSEPORT``, its own TUN, its own
SNAT table) that hands out addresses only from its slice, so the TUN's connected route
carries every VPC reply to the process holding the session. Nothing passes between workers:
they meet only in the store, as fleet nodes do. The UDP sockets are the supervisor's, one
per worker in a steered group (`sslvpn.runtime.steering`), handed to each worker it starts.

The supervisor runs no gateway and carries no packet: it starts the workers, starts again
one that exits (its clients reconnect to the others or to it), and on SIGTERM/SIGINT asks
each to stop with the gateway's own clean shutdown (clients told, TUN and routes removed),
killing only one that outlives `STOP_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path

from sslvpn.net.subpools import worker_slices
from sslvpn.runtime.gateway import GatewayOptions
from sslvpn.runtime.instance import stop_on_signals
from sslvpn.runtime.netconf import NFT_TABLE

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
RESTART_DELAY = 1.0  # seconds before a worker that exited is started again
MAX_RESTART_DELAY = 30.0  # a worker failing at once again and again waits up to this long
HEALTHY_RUN = 60.0  # seconds a worker must have run for its next restart to be prompt again
STOP_TIMEOUT = 30.0  # seconds a worker has to tell its clients and remove its TUN


@dataclass(frozen=True)
class WorkerSlot:
    """Worker ``index`` of ``count``: which slice of the node's pools it serves."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> WorkerSlot:
        """``INDEX/COUNT`` as the supervisor passes it on a worker's command line."""
        index, _, count = text.partition("/")
        slot = cls(int(index), int(count))
        if not 0 <= slot.index < slot.count:
            raise ValueError(f"worker {text}: want INDEX/COUNT with 0 <= INDEX < COUNT")
        return slot

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def first(self) -> bool:
        """The worker that also runs the node-wide companions (portal, IPsec, daily jobs)."""
        return self.index == 0

    def narrow(self, options: GatewayOptions) -> GatewayOptions:
        """The gateway options of this worker: its slice of the node's pools, its share
        of the node's max-clients and its lane of peer-ids."""
        pool, pool6 = worker_slices(options.pool, options.pool6, self.count)[self.index]
        limits = options.admission
        share = -(-limits.max_clients // self.count)
        return dataclasses.replace(options, pool=pool, pool6=pool6,
                                   admission=dataclasses.replace(limits, max_clients=share),
                                   peer_id_lane=(self.index, self.count))

    def control_socket(self, default: Path) -> Path:
        """The first worker answers on the usual socket, the others beside it."""
        return default if self.first else default.with_name(f"control-w{self.index}.sock")

    @property
    def nft_table(self) -> str:
        return f"{NFT_TABLE}_w{self.index}"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's or taskset's
    limit, not the host's count): `serve`'s default number of workers."""
    return len(os.sched_getaffinity(0))


def stop_with_supervisor() -> None:
    """Have the kernel send this worker SIGTERM (its clean shutdown) when the supervisor
    dies, even by SIGKILL: otherwise the workers would serve on without the data folder's
    lock, beside a new `serve`."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("cannot ask to stop with the supervisor: %s",
                    os.strerror(ctypes.get_errno()))
    if os.getppid() == 1:  # the supervisor died before we asked
        os.kill(os.getpid(), signal.SIGTERM)


def other_control_sockets(default: Path) -> list[Path]:
    """The control sockets of the workers after the first, as found beside ``default``."""
    return sorted(default.parent.glob("control-w*.sock"))


Command = Callable[[WorkerSlot], Sequence[str]]
Descriptors = Callable[[WorkerSlot], Sequence[int]]
Companion = Callable[[], Coroutine[object, object, None]]


class Supervisor:
    """Keeps ``count`` worker processes running until ``stop()``."""

    def __init__(self, count: int, command: Command, *, descriptors: Descriptors = lambda _: (),
                 restart_delay: float = RESTART_DELAY, stop_timeout: float = STOP_TIMEOUT) -> None:
        self.slots = [WorkerSlot(i, count) for i in range(count)]
        self._command = command
        self._descriptors = descriptors  # what each worker inherits (its UDP sockets)
        self._restart_delay = restart_delay
        self._stop_timeout = stop_timeout
        self._stopping = asyncio.Event()
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.restarts = 0

    def stop(self) -> None:
        """Begin stopping every worker (signal handlers call this)."""
        self._stopping.set()

    async def run(self) -> None:
        """Run the workers until ``stop()``; returns once every one has exited."""
        async with asyncio.TaskGroup() as group:
            for slot in self.slots:
                group.create_task(self._keep(slot), name=f"worker-{slot.index}")

    async def _keep(self, slot: WorkerSlot) -> None:
        delay = 0.0  # the first restart waits the plain restart delay
        while not self._stopping.is_set():
            started = time.monotonic()
            process = await asyncio.create_subprocess_exec(
                *self._command(slot), pass_fds=self._descriptors(slot))
            self.processes[slot.index] = process
            log.info("worker %s started (pid %d)", slot, process.pid)
            exited = asyncio.ensure_future(process.wait())
            stopping = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait((exited, stopping), return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not exited.done():
                await self._end(slot, process, exited)
                return
            delay = next_delay(delay, time.monotonic() - started, self._restart_delay)
            log.warning("worker %s (pid %d) exited with %s; starting it again in %.0f s",
                        slot, process.pid, _status(process.returncode), delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            self.restarts += 1

    async def _end(self, slot: WorkerSlot, process: asyncio.subprocess.Process,
                   exited: asyncio.Future[int]) -> None:
        """SIGTERM (the worker's clean shutdown), SIGKILL after the timeout."""
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(exited), self._stop_timeout)
        except TimeoutError:
            log.error("worker %s (pid %d) did not stop within %.0f s; killing it",
                      slot, process.pid, self._stop_timeout)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await exited
        log.info("worker %s stopped (%s)", slot, _status(process.returncode))


def next_delay(previous: float, lived: float, first: float = RESTART_DELAY) -> float:
    """The wait before a restart: ``first`` after a worker that ran well, else doubled up to
    `MAX_RESTART_DELAY` (a worker that cannot start, e.g. its TUN refused, does not spin)."""
    if lived >= HEALTHY_RUN:
        return first
    return min(MAX_RESTART_DELAY, max(first, previous * 2))


def _status(code: int | None) -> str:
    if code is not None and code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"status {code}"


async def supervise(supervisor: Supervisor, companions: Sequence[Companion] = ()) -> None:
    """Run ``supervisor`` with SIGTERM and SIGINT mapped to stopping every worker, and the
    node-wide ``companions`` (portal, sweep, daily work) beside it until the workers have
    stopped. A companion that fails stops the workers too, and its error is raised."""
    with stop_on_signals(supervisor.stop):
        tasks = [asyncio.create_task(companion()) for companion in companions]
        for task in tasks:
            task.add_done_callback(lambda _task: supervisor.stop())
        try:
            await supervisor.run()
        finally:
            for task in tasks:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            raise outcome
