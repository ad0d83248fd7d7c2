"""The Prometheus families: counted right by the gateway, read at scrape time, valid text.

The gateway runs on MemoryTun with scripted cores (tests.runtime.test_gateway's harness);
the store facts come from a data folder made by the real `sslvpn init`; every exposition
goes through the real `promtool check metrics`.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from sslvpn.cli import main
from sslvpn.config import DataPaths
from sslvpn.openvpn.events import PeerRefused, SessionClosed
from sslvpn.runtime.control import TunnelStatus
from sslvpn.runtime.metrics import (
    Metrics,
    gateway_source,
    ipsec_source,
    listener_source,
    store_facts,
)
from sslvpn.store import db, node_queries
from sslvpn.store.async_store import AsyncStore
from tests.runtime.fakes import FakeCore, ipv4
from tests.runtime.test_gateway import VPC_HOST, Harness

GATEWAY_FAMILIES = {"sslvpn_sessions", "sslvpn_handshakes", "sslvpn_tunnel_bytes",
                    "sslvpn_tunnel_packets", "sslvpn_dropped_packets",
                    "sslvpn_store_write_queue_depth"}


def promtool_check(text: str) -> None:
    """The real `promtool check metrics` (Debian's prometheus package) accepts ``text``."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (run scripts/install-test-deps)")
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[_key(sample)] = sample.value
    return found


def _key(sample: Sample) -> tuple[str, tuple[tuple[str, str], ...]]:
    return sample.name, tuple(sorted(sample.labels.items()))


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return found[name, tuple(sorted(labels.items()))]


async def scrape(metrics: Metrics) -> str:
    """A scrape from another thread with its own loop, as the metrics listener makes it."""
    body, content_type = await asyncio.to_thread(lambda: asyncio.run(metrics.scrape()))
    assert content_type.startswith("text/plain; version=0.0.4")
    return body.decode()


async def test_handshakes_are_counted_once_by_result() -> None:
    h = await Harness.started()
    h.policy.add("a1", "alice")
    h.policy.add("b2", "bob", status="revoked")
    await h.connect("a1")
    await h.connect("b2")
    await h.connect("ff")  # unknown certificate
    # the core refused an expired certificate itself, then lingered; a handshake that ran
    # out of time; a TLS failure
    for events in ([PeerRefused("certificate has expired"), SessionClosed("auth failed: x")],
                   [SessionClosed("TLS key negotiation did not finish in hand-window")],
                   [SessionClosed("TLS error: handshake failure")]):
        core = FakeCore()
        session = h.gateway.new_session(core, transmit=lambda _d: None, protocol="udp",
                                        real_address="198.18.0.9:1", on_closed=lambda: None)
        core.events.extend(events)
        assert session.driver is not None
        session.driver.pump()
    lost = h.gateway.new_session(FakeCore(), transmit=lambda _d: None, protocol="tcp",
                                 real_address="198.18.0.9:2", on_closed=lambda: None)
    h.gateway.transport_lost(lost)  # the client went away: not a failed handshake
    assert h.gateway.counters().handshakes == {
        "ok": 1, "auth_failed": 1, "revoked": 1, "expired": 1, "tls_error": 1, "timeout": 1}


async def test_a_scrape_reads_what_moved_since_the_last() -> None:
    h = await Harness.started()
    h.policy.add("a1", "alice")
    client, _ = await h.connect("a1")
    assert client.driver is not None
    metrics = Metrics(loop=asyncio.get_running_loop())
    metrics.add_loop_source(gateway_source(h.gateway.counters, "n1"))
    metrics.add_loop_source(ipsec_source(h.gateway.tunnel_status))
    tunnel = TunnelStatus("t1", "up", None, None, "c1", "c2", bytes_in=10, bytes_out=20,
                          packets_in=1, packets_out=2, rekeys={"child": 3}, ike_half_open=2,
                          ike_drops={"cookie-required": 7}, esp_drops={"esp-replayed": 4},
                          gateway_drops={"esp-unknown-spi": 9, "ike-cookie-required": 7})
    h.gateway.tunnel_status_providers.append(lambda: [tunnel])
    before = await scrape(metrics)
    promtool_check(before)
    first = samples(before)
    assert {f.name for f in text_string_to_metric_families(before)} >= GATEWAY_FAMILIES | {
        "process_cpu_seconds", "process_open_fds", "python_info"}
    assert value(first, "sslvpn_sessions", node="n1", proto="udp") == 1
    assert value(first, "sslvpn_sessions", node="n1", proto="tcp") == 0
    assert value(first, "sslvpn_handshakes_total", node="n1", result="ok") == 1
    assert value(first, "sslvpn_tunnel_packets_total", node="n1", direction="in") == 0
    assert value(first, "sslvpn_ipsec_tunnel_up", tunnel="t1") == 1
    assert value(first, "sslvpn_ipsec_bytes_total", tunnel="t1", direction="out") == 20
    assert value(first, "sslvpn_ipsec_rekeys_total", tunnel="t1", kind="child") == 3
    assert value(first, "sslvpn_ipsec_rekeys_total", tunnel="t1", kind="ike") == 0
    assert value(first, "sslvpn_ipsec_ike_half_open", tunnel="t1") == 2
    assert value(first, "sslvpn_ipsec_dropped_total", tunnel="t1", plane="ike",
                 reason="cookie-required") == 7
    assert value(first, "sslvpn_ipsec_dropped_total", tunnel="t1", plane="esp",
                 reason="esp-replayed") == 4
    assert value(first, "sslvpn_ipsec_gateway_dropped_total", reason="esp-unknown-spi") == 9

    outbound, inbound = ipv4("10.8.0.2", VPC_HOST), ipv4(VPC_HOST, "10.8.0.2", b"pong")
    for _ in range(3):
        client.driver.feed(outbound)
        h.tun.inject(inbound)
    client.driver.feed(ipv4("10.8.0.2", "8.8.8.8"))
    after = samples(await scrape(metrics))
    assert value(after, "sslvpn_tunnel_packets_total", node="n1", direction="in") == 3
    assert value(after, "sslvpn_tunnel_packets_total", node="n1", direction="out") == 3
    assert value(after, "sslvpn_tunnel_bytes_total", node="n1", direction="in") == \
        3 * len(outbound)
    assert value(after, "sslvpn_tunnel_bytes_total", node="n1", direction="out") == \
        3 * len(inbound)
    assert value(after, "sslvpn_dropped_packets_total", node="n1", reason="outside-vpc") == 1
    assert value(after, "sslvpn_store_write_queue_depth") == 2  # opened and leased, unwritten

    h.gateway.kick(client.session_id)  # a closed session's totals stay in the counters
    gone = samples(await scrape(metrics))
    assert value(gone, "sslvpn_sessions", node="n1", proto="udp") == 0
    assert value(gone, "sslvpn_tunnel_packets_total", node="n1", direction="in") == 3


async def test_half_open_clients_and_refusals_are_gauges_and_counters() -> None:
    """The listeners' admission as the metrics show it: a scrape reads it live."""
    h = await Harness.started()
    metrics = Metrics(loop=asyncio.get_running_loop())
    metrics.add_loop_source(listener_source(h.gateway.listener_status, "n1"))
    admission = h.gateway.admission
    held = [admission.take("203.0.113.9", "tcp", lambda: None) for _ in range(20)]
    udp = admission.take("198.51.100.7", "udp", lambda: None)
    admission.refuse("rate-limited", "192.0.2.1")
    text = await scrape(metrics)
    promtool_check(text)
    found = samples(text)
    assert value(found, "sslvpn_openvpn_clients", node="n1") == 17
    assert value(found, "sslvpn_openvpn_half_open", node="n1", proto="tcp") == 16
    assert value(found, "sslvpn_openvpn_half_open", node="n1", proto="udp") == 1
    assert value(found, "sslvpn_openvpn_refused_total", node="n1",
                 reason="half-open-per-address") == 4
    assert value(found, "sslvpn_openvpn_refused_total", node="n1", reason="rate-limited") == 1
    assert value(found, "sslvpn_openvpn_client_limit", node="n1",
                 limit="half_open_per_address") == 16
    assert udp is not None
    udp.authenticated()
    for slot in held[:16]:
        assert slot is not None
        slot.release()
    found = samples(await scrape(metrics))
    assert value(found, "sslvpn_openvpn_half_open", node="n1", proto="tcp") == 0
    assert value(found, "sslvpn_openvpn_half_open_peak", node="n1", proto="tcp") == 16
    assert value(found, "sslvpn_openvpn_half_open", node="n1", proto="udp") == 0
    assert value(found, "sslvpn_openvpn_clients", node="n1") == 1


async def test_a_stuck_gateway_loop_leaves_its_families_out() -> None:
    """The scrape still answers (process metrics) when the gateway's loop does not."""
    gateway_loop = asyncio.new_event_loop()  # never run: nothing it is asked ever happens
    try:
        h = Harness()
        metrics = Metrics(loop=gateway_loop)
        metrics.add_loop_source(gateway_source(h.gateway.counters, "n1"))
        text = (await metrics.scrape())[0].decode()
    finally:
        gateway_loop.close()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert "process_cpu_seconds" in names and not names & GATEWAY_FAMILIES


@pytest.fixture
def initialised(tmp_path: Path) -> Iterator[tuple[DataPaths, AsyncStore]]:
    data = tmp_path / "data"
    runner = CliRunner()
    for args in (["init", "--public-address", "198.18.0.1"], ["user", "add", "alice"],
                 ["cert", "issue", "alice", "--device", "laptop", "--days", "30"],
                 ["cert", "issue", "alice", "--device", "phone", "--days", "20"],
                 ["node", "add", "n1", "--public-address", "198.18.0.1"]):
        result = runner.invoke(main, ["--data-dir", str(data), *args])
        assert result.exit_code == 0, result.output
    engine = db.open_engine(f"sqlite:///{data / 'sslvpn.db'}")
    store = AsyncStore(engine)
    yield DataPaths(data), store
    asyncio.run(store.close())
    engine.dispose()


async def test_store_facts_give_each_expiry_and_heartbeat_age(
        initialised: tuple[DataPaths, AsyncStore]) -> None:
    paths, store = initialised
    metrics = Metrics(store=store)
    metrics.add_store_source(store_facts(paths))
    text = await scrape(metrics)
    promtool_check(text)
    found = samples(text)

    def expiry(kind: str) -> datetime:
        stamp = value(found, "sslvpn_certificate_expiry_timestamp_seconds", kind=kind)
        return datetime.fromtimestamp(stamp, UTC)

    for kind, path in (("ca", paths.ca_cert), ("server", paths.server_cert)):
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
        assert expiry(kind) == certificate.not_valid_after_utc
    now = datetime.now(UTC)
    assert abs(expiry("earliest_client") - (now + timedelta(days=20))) < timedelta(hours=1)
    assert now < expiry("crl_next_update") < now + timedelta(days=400)
    assert ("sslvpn_node_heartbeat_age_seconds", (("node", "n1"),)) not in found  # never beat
    with db.session(store.engine, write=True) as s:
        node_queries.beat(s, name="n1", software_version="t", seen_vpc_addresses=[])
    aged = samples(await scrape(metrics))
    assert 0 <= value(aged, "sslvpn_node_heartbeat_age_seconds", node="n1") < 60
