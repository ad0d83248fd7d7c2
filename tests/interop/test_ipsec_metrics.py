"""`serve --metrics-listen` with an IPsec tunnel up to a real strongSwan peer.

Layout as in test_serve_ipsec (namespaces with the prefix ``p12``): `sslvpn serve` in siteb
holds tunnel t1 to charon in sitea. A known TCP transfer from the peer's LAN (lana) to the
VPC side (lanb) crosses the tunnel; the scrapes before and after it pass promtool, the
tunnel's byte counters move by the transfer, and once serve has stopped (well before its
first accounting round, 60 s in) the tunnel's traffic-history buckets hold what the counters
said: the stop books the tunnels' last bytes.

What the tunnel counters count: inner IP packets (IP and TCP headers included) as they
enter or leave the CHILD_SA, not ESP, UDP or outer IP. So the transfer's N bytes of payload
are N plus about 3.6 % (52 header bytes per segment of at most 1448) "in", and the ACKs
"out"; the bound used is 10 %.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sslvpn.store import db, traffic_queries
from tests.interop.conftest import SSLVPN, STREAM_PORT, STREAM_TOOL
from tests.interop.test_metrics import FETCH
from tests.interop.test_serve_ipsec import ESP, IKE, Sites, _state, configure_tunnel, site_lab
from tests.ipsec.strongswan_lab import HOST_B, WAN_B, Charon, CharonConfig
from tests.netns import file_contains, wait_until
from tests.runtime.test_metrics import promtool_check, samples, value

pytestmark = pytest.mark.interop

METRICS_PORT = 9612
TRANSFER = 2 * 1024 * 1024
TUNNEL = "t1"


@pytest.fixture
def sites() -> Iterator[Sites]:
    with site_lab("p12") as found:
        yield found


def _scrape(sites: Sites, *, check: bool = True) -> str:
    """One scrape from inside the gateway's namespace (checked by promtool unless asked)."""
    status, _, text = sites.siteb.run(
        sys.executable, "-c", FETCH, f"http://127.0.0.1:{METRICS_PORT}/metrics").partition("\n")
    assert status == "200", text
    if check:
        promtool_check(text)
    return text


def _counters(text: str) -> tuple[int, int]:
    """The tunnel's byte counters (in, out) in a scrape."""
    found = samples(text)
    return (int(value(found, "sslvpn_ipsec_bytes_total", tunnel=TUNNEL, direction="in")),
            int(value(found, "sslvpn_ipsec_bytes_total", tunnel=TUNNEL, direction="out")))


def _booked(data: Path) -> tuple[int, int]:
    """Every byte the traffic history holds for the tunnel, each way."""
    engine = db.open_engine(f"sqlite:///{data / 'sslvpn.db'}")
    try:
        with db.session(engine, write=False) as s:
            return traffic_queries.totals(s, scope="tunnel", name=TUNNEL)
    finally:
        engine.dispose()


def test_tunnel_metrics_move_with_a_transfer_and_its_history_adds_up(
    sites: Sites, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    configure_tunnel(data)
    charon = Charon(sites.sitea, tmp_path / "charon", CharonConfig(ike_proposals=IKE,
                                                                   esp_proposals=ESP))
    charon.start()
    log, stream_log = tmp_path / "serve.log", tmp_path / "stream.log"
    serve = sites.siteb.spawn([SSLVPN, "--data-dir", str(data), "serve", "--listen", WAN_B,
                               "--no-portal", "--metrics-listen", str(METRICS_PORT)], log=log)
    sink = sites.lanb.spawn([sys.executable, STREAM_TOOL, "serve", HOST_B, str(STREAM_PORT)],
                            log=stream_log)
    try:
        assert wait_until(lambda: serve.poll() is not None or _state(data)[0] == "up", 30, 0.2), \
            log.read_text()[-3000:] + charon.tail()
        assert wait_until(file_contains(stream_log, "ready"), 10), stream_log.read_text()
        up = ("sslvpn_ipsec_tunnel_up", (("tunnel", TUNNEL),))
        assert wait_until(lambda: samples(_scrape(sites, check=False)).get(up) == 1, 20, 0.5)
        assert wait_until(lambda: sites.lana.ok("ping", "-c", "1", "-W", "1", HOST_B), 15, 0.2)
        before = _counters(_scrape(sites))
        moved = json.loads(sites.lana.run(sys.executable, STREAM_TOOL, "put", HOST_B,
                                          str(STREAM_PORT), str(TRANSFER), timeout=120))
        assert moved["ok"], moved
        text = _scrape(sites)
        after = _counters(text)
        assert samples(text)[up] == 1
        delta = (after[0] - before[0], after[1] - before[1])
        assert TRANSFER < delta[0] < TRANSFER * 1.1, delta
        assert 0 < delta[1] < TRANSFER * 0.1, delta  # the ACKs
        sites.lab.stop(serve, timeout=20)
        assert serve.returncode == 0, log.read_text()[-3000:]
        booked = _booked(data)
        # a late FIN or ACK of the transfer may cross the tunnel after the last scrape
        assert after[0] <= booked[0] <= after[0] + 500, (booked, after)
        assert after[1] <= booked[1] <= after[1] + 500, (booked, after)
        sys.stderr.write(f"\n[p12] transfer {TRANSFER} B; counters before {before}, after "
                         f"{after}, delta {delta}; tunnel buckets {booked}\n"
                         + "\n".join(line for line in text.splitlines()
                                     if line.startswith("sslvpn_ipsec_")) + "\n")
    finally:
        sites.lab.stop(serve, timeout=20)
        sites.lab.stop(sink)
        charon.stop()
