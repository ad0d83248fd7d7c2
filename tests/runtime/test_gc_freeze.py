"""`serve` freezes start-up's objects out of the garbage collector once the gateway serves,
so a full collection on the packet loop walks only what was made since (a pause of tens of
milliseconds per collection otherwise)."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

from sslvpn.runtime.service import GatewayService, ServeOptions, serve
from sslvpn.runtime.tun import MemoryTun
from sslvpn.store.async_store import AsyncStore
from tests.runtime.loopback import make_data_folder


async def test_serving_gateway_has_start_up_frozen(tmp_path: Path) -> None:
    paths, engine = make_data_folder(tmp_path)
    tun = MemoryTun()
    service = GatewayService(paths, AsyncStore(engine),
                             ServeOptions(listen=("127.0.0.1",), port=0, configure_network=False),
                             tun_factory=lambda _name: tun)
    gc.unfreeze()
    try:
        task = asyncio.create_task(serve(service))
        async with asyncio.timeout(10):
            await service.ready.wait()
            while gc.get_freeze_count() == 0:  # frozen by a task woken by the same event
                await asyncio.sleep(0.01)
        before_collect = gc.get_freeze_count()
        gc.collect()
        assert gc.get_freeze_count() == before_collect > 10_000  # kept out of collections
        service.stop()
        async with asyncio.timeout(10):
            await task
    finally:
        gc.unfreeze()
        engine.dispose()
