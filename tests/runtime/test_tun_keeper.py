"""The TUN keeper: a device deleted under the gateway is recreated and configured again, or
the gateway stops with an error when it cannot be."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from sslvpn.runtime import tun_keeper
from sslvpn.runtime.tun import MemoryTun
from sslvpn.runtime.tun_keeper import TunLostError, keep_tun
from tests.runtime.test_gateway_accounting import background, until


async def test_a_lost_device_is_recreated_and_configured_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tun = MemoryTun("sslvpn0")
    configured: list[bool] = []
    async with background(keep_tun(tun, lambda: configured.append(tun.lost), lambda: 3)):
        await until(lambda: tun.on_lost is not None)
        tun.lose()
        tun.write(b"dropped while gone")
        await until(lambda: bool(configured))
        tun.write(b"delivered")
    assert (tun.reopened, configured) == (1, [False])  # configured after it was back
    assert tun.written == [b"delivered"] and tun.drops == 1
    assert caplog.text.count("TUN device sslvpn0 vanished") == 1
    assert "packets of 3 session(s) are dropped" in caplog.text
    assert caplog.text.count("TUN device sslvpn0 recreated with its addresses and routes") == 1


class StubbornTun(MemoryTun):
    """Its name was taken meanwhile: it cannot be created again."""

    def reopen(self) -> None:
        self.reopened += 1
        raise OSError(16, "Device or resource busy")


async def test_a_device_that_cannot_be_recreated_stops_the_gateway(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tun_keeper, "RESTORE_FOR", 0.2)
    monkeypatch.setattr(tun_keeper, "RETRY_FIRST", 0.01)
    tun = StubbornTun("sslvpn0")
    keeper = asyncio.create_task(keep_tun(tun, None, lambda: 0))
    try:
        await until(lambda: tun.on_lost is not None)
        tun.lose()
        async with asyncio.timeout(10):
            with pytest.raises(TunLostError, match="sslvpn0 vanished and could not be recreated"):
                await keeper
        assert tun.reopened >= 2  # retried before giving up
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError, TunLostError):
            await keeper
