"""What `serve` sets up for the loop that carries packets, beside the gateway itself: start-up's
objects frozen out of the garbage collector once it serves (a full collection on the packet
loop walks only what was made since, not the imports: tens of milliseconds per collection
otherwise), and a short GIL switch interval while it runs (a store thread holding the
interpreter hands it back to the loop within half a millisecond, not Python's 5 ms)."""

from __future__ import annotations

import asyncio
import gc
import sys
from pathlib import Path

from sslvpn.runtime.service import SWITCH_INTERVAL, GatewayService, ServeOptions, serve
from sslvpn.runtime.tun import MemoryTun
from sslvpn.store.async_store import AsyncStore
from tests.runtime.loopback import make_data_folder


async def test_serving_gateway_has_start_up_frozen_and_a_short_switch_interval(
    tmp_path: Path
) -> None:
    paths, engine = make_data_folder(tmp_path)
    tun = MemoryTun()
    service = GatewayService(paths, AsyncStore(engine),
                             ServeOptions(listen=("127.0.0.1",), port=0, configure_network=False),
                             tun_factory=lambda _name: tun)
    gc.unfreeze()
    before = sys.getswitchinterval()
    try:
        task = asyncio.create_task(serve(service))
        async with asyncio.timeout(10):
            await service.ready.wait()
            while gc.get_freeze_count() == 0:  # frozen by a task woken by the same event
                await asyncio.sleep(0.01)
        assert sys.getswitchinterval() == SWITCH_INTERVAL < before
        frozen = gc.get_freeze_count()
        gc.collect()
        assert gc.get_freeze_count() == frozen > 10_000  # kept out of collections
        service.stop()
        async with asyncio.timeout(10):
            await task
        assert sys.getswitchinterval() == before  # given back when the gateway stops
    finally:
        gc.unfreeze()
        sys.setswitchinterval(before)
        engine.dispose()
