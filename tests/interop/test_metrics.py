"""`serve --metrics-listen`: a real openvpn 2.6 client moves traffic, and the scrapes that
`promtool check metrics` accepts show the values move.

The gateway serves its metrics on loopback inside its namespace (a bare port); the scrapes
are made from there. A revoked certificate's attempt shows as a "revoked" handshake. An IPsec
tunnel configured towards a peer that does not answer shows as down. Namespaces use the
prefix ``m12`` and are removed in finalizers.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import select

from sslvpn.config import DataPaths
from sslvpn.store import db, traffic_queries
from sslvpn.store.models import Certificate
from tests.interop.conftest import (
    STREAM_PORT,
    STREAM_TOOL,
    VPC_HOST,
    Topology,
    add_waiting_tunnel,
    build_topology,
    sslvpn,
)
from tests.netns import file_contains, wait_until
from tests.runtime.test_metrics import GATEWAY_FAMILIES, promtool_check, samples, value

pytestmark = pytest.mark.interop

METRICS_PORT = 9540
CONNECTED = "Initialization Sequence Completed"
TRANSFER = 4 * 1024 * 1024
PSK = "m12-lab-psk-0123456789abcdef-0123"  # noqa: S105 (a test credential)
FETCH = """
import sys, urllib.error, urllib.request
try:
    answer = urllib.request.urlopen(sys.argv[1], timeout=10)
except urllib.error.HTTPError as error:
    answer = error
sys.stdout.write(str(answer.status) + "\\n" + answer.read().decode())
"""


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    work = tmp_path_factory.mktemp("m12-metrics")
    with build_topology(work, prefix="m12", serve_args=(
            "--no-portal", "--metrics-listen", str(METRICS_PORT), "--log-format", "json",
    )) as topology:
        yield topology


def _get(topo: Topology, path: str) -> tuple[int, str]:
    """A GET on the metrics listener from inside the gateway's namespace: status, body."""
    status, _, body = topo.gateway_ns.run(
        sys.executable, "-c", FETCH, f"http://127.0.0.1:{METRICS_PORT}{path}").partition("\n")
    return int(status), body


def _scrape(topo: Topology) -> str:
    """One scrape, checked by promtool."""
    status, text = _get(topo, "/metrics")
    assert status == 200
    promtool_check(text)
    return text


def test_scrapes_follow_a_real_client_and_promtool_accepts_them(topo: Topology) -> None:
    assert wait_until(file_contains(topo.gateway_log,
                                    f"metrics: http://127.0.0.1:{METRICS_PORT}/metrics"), 20), \
        topo.gateway_log.read_text()
    add_waiting_tunnel(topo.data_dir, PSK)
    tunnel_up = ("sslvpn_ipsec_tunnel_up", (("tunnel", "t1"),))
    assert wait_until(lambda: tunnel_up in samples(_scrape(topo)), 20, 0.5)  # service read it
    topo.issue("alice", "laptop")
    log = topo.work / "alice.log"
    client = topo.client_ns.spawn(["openvpn", "--config", str(topo.profile("alice", "laptop",
                                   "udp")), "--disable-dco", "--verb", "3", "--log", str(log)])
    try:
        assert wait_until(file_contains(log, CONNECTED), 30), \
            log.read_text() + topo.gateway_log.read_text()[-3000:]
        assert topo.client_ns.ok("ping", "-c", "3", "-i", "0.2", "-W", "2", VPC_HOST)
        before = samples(_scrape(topo))
        moved = json.loads(topo.client_ns.run(
            sys.executable, STREAM_TOOL, "put", VPC_HOST, str(STREAM_PORT), str(TRANSFER),
            timeout=120))
        assert moved["ok"], moved
        text = _scrape(topo)
    finally:
        topo.lab.stop(client)
    after = samples(text)
    sys.stderr.write("\n[metrics] scrape during traffic:\n" + "\n".join(
        line for line in text.splitlines() if line.startswith("sslvpn_")) + "\n")

    def moved_by(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    node = {"node": "default"}
    assert value(after, "sslvpn_sessions", proto="udp", **node) == 1
    assert value(after, "sslvpn_handshakes_total", result="ok", **node) >= 1
    assert moved_by("sslvpn_tunnel_bytes_total", direction="in", **node) > TRANSFER
    assert moved_by("sslvpn_tunnel_bytes_total", direction="out", **node) > 0  # TCP ACKs
    assert moved_by("sslvpn_tunnel_packets_total", direction="in", **node) > TRANSFER / 1500
    kinds = {labels for (name, labels) in after
             if name == "sslvpn_certificate_expiry_timestamp_seconds"}
    assert kinds == {(("kind", k),) for k in ("ca", "server", "crl_next_update",
                                               "earliest_client")}
    assert after[tunnel_up] == 0  # its peer never answers
    assert value(after, "sslvpn_ipsec_rekeys_total", tunnel="t1", kind="child") == 0
    families = {family.name for family in text_string_to_metric_families(text)}
    assert families >= GATEWAY_FAMILIES | {"process_resident_memory_bytes"}


def test_a_revoked_certificate_counts_as_a_revoked_handshake(topo: Topology) -> None:
    serial = topo.issue("bob", "phone")
    profile = topo.profile("bob", "phone", "udp")
    sslvpn(topo.data_dir, "cert", "revoke", serial)
    before = samples(_scrape(topo))
    log = topo.work / "bob.log"
    client = topo.client_ns.spawn(["openvpn", "--config", str(profile), "--disable-dco",
                                   "--verb", "3", "--auth-retry", "none", "--log", str(log)])
    try:
        assert wait_until(file_contains(log, "AUTH_FAILED"), 30), log.read_text()
    finally:
        topo.lab.stop(client)

    def revoked() -> float:
        return value(samples(_scrape(topo)), "sslvpn_handshakes_total", node="default",
                     result="revoked")

    start = value(before, "sslvpn_handshakes_total", node="default", result="revoked")
    assert wait_until(lambda: revoked() == start + 1, 10)


def _secret_lines(topo: Topology) -> list[str]:
    """Lines of every key the gateway holds (PEM bodies, tls-crypt keys), the clients' keys
    from the store, and the tunnel's PSK."""
    paths = DataPaths(topo.data_dir)
    texts = [path.read_text() for path in (paths.ca_key, paths.server_key, paths.tls_crypt_key,
                                           paths.tls_crypt_v2_server_key) if path.exists()]
    engine = db.open_engine(f"sqlite:///{topo.data_dir / 'sslvpn.db'}")
    try:
        with db.session(engine, write=False) as s:
            texts += [row.key_pem for row in s.exec(select(Certificate)).all() if row.key_pem]
    finally:
        engine.dispose()
    lines = [line for text in texts for line in text.splitlines()
             if len(line) >= 16 and not line.startswith(("-----", "#"))]
    return [*lines, PSK]


def test_the_json_log_carries_the_events_and_no_secret(topo: Topology) -> None:
    """After the client and the refused attempt above: every log line is JSON with the
    events' fields, and no line of any key (nor the PSK) is anywhere in the output."""
    text = topo.gateway_log.read_text()
    logged = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert all({"timestamp", "level", "node", "event", "message"} <= set(line)
               for line in logged)
    assert not [line for line in text.splitlines()
                if line and not line.startswith(("{", "gateway:", "metrics:"))], text[-2000:]
    by_event = {line["event"]: line for line in logged}  # the last of each
    connected, ended = by_event["session.connected"], by_event["session.disconnected"]
    assert (connected["user"], connected["device"], connected["node"]) == (
        "alice", "laptop", "default")
    assert connected["real_address"].startswith("198.18.0.2:")
    assert ended["user"] == "alice" and ended["bytes_in"] > TRANSFER
    assert ended["duration_seconds"] > 0 and ended["reason"]
    assert (by_event["handshake.refused"]["user"], by_event["handshake.refused"]["result"]) == (
        "bob", "revoked")
    assert any(line["event"] == "tunnel.state" and line["tunnel"] == "t1" for line in logged)
    secrets = _secret_lines(topo)
    assert len(secrets) > 20
    assert [secret for secret in secrets if secret in text] == []


def test_the_traffic_history_adds_up_to_the_session(topo: Topology) -> None:
    """alice's 4 MB went through one session: her minute buckets and the node's hold exactly
    the session's byte counts (tunnelled IP packets, headers included: 4 MB of payload is
    about 4.2 MB of TCP/IP packets in, ACKs out; the OpenVPN and UDP framing around them is
    not counted)."""
    ended = [json.loads(line) for line in topo.gateway_log.read_text().splitlines()
             if line.startswith("{") and '"session.disconnected"' in line]
    [alice] = [e for e in ended if e["user"] == "alice"]
    session = (alice["bytes_in"], alice["bytes_out"])
    assert TRANSFER < session[0] < TRANSFER * 1.1

    def booked(scope: str, name: str) -> tuple[int, int]:
        engine = db.open_engine(f"sqlite:///{topo.data_dir / 'sslvpn.db'}")
        try:
            with db.session(engine, write=False) as s:
                return traffic_queries.totals(s, scope=scope, name=name)
        finally:
            engine.dispose()

    assert wait_until(lambda: booked("user", "alice") == session, 10), booked("user", "alice")
    assert booked("node", "default") == session  # bob moved nothing


def test_readyz_follows_the_tun_and_healthz_the_loop(topo: Topology) -> None:
    """Last in the module: it takes the TUN down for a moment."""

    def probe(path: str) -> tuple[int, object]:
        status, body = _get(topo, path)
        return status, json.loads(body)

    assert probe("/healthz") == (200, {"alive": True})
    ready = {"store": True, "listeners": True, "tun": True}
    assert probe("/readyz") == (200, {"ready": True, "checks": ready})
    topo.gateway_ns.run("ip", "link", "set", "sslvpn0", "down")
    try:
        assert wait_until(lambda: probe("/readyz") == (
            503, {"ready": False, "checks": {**ready, "tun": False}}), 10)
    finally:
        topo.gateway_ns.run("ip", "link", "set", "sslvpn0", "up")
    assert wait_until(lambda: probe("/readyz")[0] == 200, 10)
