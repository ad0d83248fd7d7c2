"""`serve --tracemalloc`: each SIGUSR2 leaves one complete, loadable snapshot file."""

from __future__ import annotations

import asyncio
import os
import signal
import tracemalloc
from pathlib import Path

from sslvpn.cli.serve import heap_snapshot_task


async def test_sigusr2_writes_a_loadable_snapshot(tmp_path: Path) -> None:
    folder = tmp_path / "tracemalloc"
    tracemalloc.start(2)
    task = asyncio.create_task(heap_snapshot_task(folder)(None))  # type: ignore[arg-type]
    try:
        await asyncio.sleep(0)  # the task installs its signal handler
        os.kill(os.getpid(), signal.SIGUSR2)
        async with asyncio.timeout(30):
            while not list(folder.glob("*.tracemalloc")):
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        tracemalloc.stop()
    (snapshot,) = folder.glob("*.tracemalloc")
    assert tracemalloc.Snapshot.load(str(snapshot)).traceback_limit == 2
    assert not list(folder.glob("*.part"))
    assert folder.stat().st_mode & 0o777 == 0o700
