"""Runs sslvpn's IPsec service alone, as `sslvpn serve` would, for the interop tests.

Started inside the test's namespace: ``python ipsec_peer.py DATA_DIR [TIMERS_JSON]``. It
serves tunnel status on the data folder's control socket (read with `sslvpn ipsec status`
or `ControlClient`), rekeys every tunnel's CHILD_SA on SIGUSR1 and IKE SA on SIGUSR2, and
deletes its SAs and exits on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

from sslvpn.config import DataPaths, database_url
from sslvpn.runtime.control import (
    GatewayCounters,
    ListenerStatus,
    SessionInfo,
    TrafficSample,
    TunnelStatus,
)
from sslvpn.runtime.control_server import ControlServer
from sslvpn.runtime.ipsec_service import IpsecService
from sslvpn.store.async_store import AsyncStore
from sslvpn.store.db import open_engine, upgrade


class TunnelsOnly:
    """GatewayControl of a gateway that runs only IPsec tunnels."""

    def __init__(self, service: IpsecService) -> None:
        self.service = service

    def list_sessions(self) -> list[SessionInfo]:
        return []

    def kick(self, session_id: str, reason: str = "") -> bool:
        return False

    def kick_user(self, user: str, reason: str = "") -> int:
        return 0

    def kick_certificate(self, serial: str, reason: str = "") -> int:
        return 0

    def traffic(self) -> TrafficSample:
        return TrafficSample(datetime.now(UTC), 0, 0)

    def counters(self) -> GatewayCounters:
        return GatewayCounters({}, 0, 0, 0, 0, {}, {})

    def tunnel_status(self) -> list[TunnelStatus]:
        return self.service.tunnel_status()

    def listener_status(self) -> ListenerStatus:
        return ListenerStatus()

    def tunnel_action(self, name: str, action: str) -> str:
        return self.service.tunnel_action(name, action)


async def main(data_dir: Path, timers: dict[str, float]) -> None:
    engine = open_engine(database_url(data_dir, None))
    upgrade(engine)
    service = IpsecService(AsyncStore(engine), timers=timers, reload_interval=0.5)
    control = ControlServer(TunnelsOnly(service), DataPaths(data_dir).control_socket)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    loop.add_signal_handler(signal.SIGUSR1, lambda: service.rekey_all(loop.time(), ike=False))
    loop.add_signal_handler(signal.SIGUSR2, lambda: service.rekey_all(loop.time(), ike=True))
    await control.start()
    try:
        await service.run()
    finally:
        await control.close()


if __name__ == "__main__":
    logging.basicConfig(
        filename=str(Path(sys.argv[1]) / "ipsec.log"),
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    extra = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    try:
        asyncio.run(main(Path(sys.argv[1]), extra))
    except asyncio.CancelledError:
        pass
