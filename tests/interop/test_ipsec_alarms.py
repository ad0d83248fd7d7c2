"""The IPsec tunnel-down alarm with a real strongSwan peer and a real webhook receiver.

Layout as in test_serve_ipsec (namespaces with the prefix ``a12``): `sslvpn serve` in siteb
holds a tunnel to charon in sitea, with a short DPD so a dead peer is noticed in seconds and
alarm rounds a second apart, and an aiohttp receiver beside it checks each alarm's HMAC;
with `--workers 2` the supervisor evaluates, reading the tunnels from the first worker.
Killing charon (SIGKILL: no DELETE) must bring exactly one signed "raised"; starting it
again, exactly one "cleared".
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.conftest import SSLVPN
from tests.interop.test_serve_ipsec import (
    ESP,
    IKE,
    Sites,
    _cli,
    _state,
    configure_tunnel,
    site_lab,
)
from tests.ipsec.strongswan_lab import WAN_B, Charon, CharonConfig
from tests.netns import file_contains, wait_until

pytestmark = pytest.mark.interop

RECEIVER = str(Path(__file__).with_name("webhook_receiver.py"))
SECRET = "a12-interop-secret"
HOOK_PORT = 18099


@pytest.fixture
def sites() -> Iterator[Sites]:
    with site_lab("a12") as found:
        yield found


def _bodies(out: Path) -> list[dict[str, object]]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_killing_strongswan_raises_one_alarm_and_restarting_it_clears_it(
    sites: Sites, tmp_path: Path, workers: str
) -> None:
    data = tmp_path / "data"
    configure_tunnel(data, "--dpd-delay", "2s", "--dpd-timeout", "4s",
                     "--retransmit-timeout", "1s", "--retransmit-limit", "2s")
    _cli(data, "alarm", "set", "webhook.url", f"http://127.0.0.1:{HOOK_PORT}/hook")
    _cli(data, "alarm", "set", "webhook.secret", "-", stdin=SECRET + "\n")
    _cli(data, "alarm", "set", "ipsec-down.seconds", "3")
    _cli(data, "alarm", "set", "evaluate.seconds", "1")  # a round a second, not every 10 s
    out, hook_log = tmp_path / "hooks.jsonl", tmp_path / "receiver.log"
    receiver = sites.siteb.spawn([sys.executable, RECEIVER, str(HOOK_PORT), SECRET, str(out)],
                                 log=hook_log)
    assert wait_until(file_contains(hook_log, "listening"), 20), hook_log.read_text()
    charon = Charon(sites.sitea, tmp_path / "charon", CharonConfig(ike_proposals=IKE,
                                                                   esp_proposals=ESP))
    charon.start()
    log = tmp_path / "serve.log"
    serve = sites.siteb.spawn([SSLVPN, "--data-dir", str(data), "serve", "--listen", WAN_B,
                               "--no-portal", "--workers", workers], log=log)
    try:
        # a bound for a loaded host: two workers took 30 s to start beside other tests
        assert wait_until(lambda: serve.poll() is not None or _state(data)[0] == "up", 60, 0.2), \
            log.read_text()[-3000:] + charon.tail()
        assert charon.proc is not None
        os.killpg(charon.proc.pid, signal.SIGKILL)  # strongSwan's side dies without a word
        charon.proc.wait(10)
        charon.proc = None
        assert wait_until(lambda: len(_bodies(out)) >= 1, 60, 0.5), log.read_text()[-3000:]
        charon.start()
        assert wait_until(lambda: len(_bodies(out)) >= 2, 90, 0.5), \
            log.read_text()[-3000:] + charon.tail()
        assert wait_until(lambda: _state(data)[0] == "up", 30, 0.5)
        bodies = _bodies(out)
        assert [(b.get("event"), b.get("alarm")) for b in bodies] == [
            ("raised", "ipsec-down/t1"), ("cleared", "ipsec-down/t1")], bodies
        print("received:", json.dumps(bodies, indent=2))  # noqa: T201 - for the report
        listed = json.loads(_cli(data, "alarm", "list", "--json"))
        assert [(a["alarm"], a["state"]) for a in listed["alarms"]] == [("ipsec-down/t1",
                                                                         "cleared")]
    finally:
        sites.lab.stop(serve, timeout=20)
        sites.lab.stop(receiver)
        charon.stop()
