"""A locked store while the portal is hammered: packets keep flowing, the portal says 503.

`sslvpn serve` runs with its HTTPS portal; a real openvpn 2.6 client pings the VPC host every
0.2 s. This test then holds SQLite's ``BEGIN EXCLUSIVE`` on the gateway's database for
`LOCK_SECONDS` while `portal_hammer.py` logs in, reads an admin page and calls the REST API
without pause. No reply may come more than a second after the one before (the portal's
store work never runs on the loop that carries packets), every portal answer comes within
5 s and is a 503 with Retry-After rather than a 500, the log says once that the store is
unavailable and once that it is back, and the portal works again once the lock goes.
Namespaces use the prefix ``po`` and are removed in finalizers.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sslvpn.config import DATABASE_FILE_NAME, DataPaths
from sslvpn.store import db, queries
from tests.interop.conftest import GATEWAY_OUTER, SSLVPN, VPC_HOST, Topology, build_topology
from tests.netns import file_contains, wait_until
from web.import_links import token_hash

pytestmark = pytest.mark.interop
log = logging.getLogger(__name__)

PORTAL_LISTEN = f"{GATEWAY_OUTER}:8443"
HAMMER = str(Path(__file__).with_name("portal_hammer.py"))
CONNECTED = "Initialization Sequence Completed"
ADMIN, ADMIN_PASSWORD = "boss", "boss-portal-pw-0123456789"
LOCK_SECONDS = 20
LARGEST_PING_GAP = 1.0  # seconds between two echo replies while the store is locked
ANSWER_WITHIN = 5.0  # seconds for any portal answer during the outage
REPLY = re.compile(r"^\[(\d+\.\d+)\] .* icmp_seq=(\d+) ")


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    work = tmp_path_factory.mktemp("po-outage")
    with build_topology(work, prefix="po", serve_args=("--portal-listen", PORTAL_LISTEN)) as t:
        yield t


def _api_token(data_dir: Path, user: str) -> str:
    """A bearer token for ``user``, stored hashed as the portal's token page would."""
    token = "svt_" + secrets.token_urlsafe(32)
    engine = db.open_engine(f"sqlite:///{data_dir / DATABASE_FILE_NAME}")
    try:
        with db.session(engine, write=True) as s:
            owner = queries.get_user(s, name=user)
            assert owner.id is not None
            queries.add_api_token(s, user_id=owner.id, name="hammer", token_hash=token_hash(token))
    finally:
        engine.dispose()
    return token


def _hammer(topo: Topology, token: str, seconds: float) -> list[dict[str, Any]]:
    """Every answer the hammer got in ``seconds`` (one round each when 0)."""
    url = f"https://{PORTAL_LISTEN}/"
    ca = str(DataPaths(topo.data_dir).ca_cert)
    out = topo.client_ns.run(sys.executable, HAMMER, url, ca, str(seconds),
                             stdin=f"{ADMIN}\n{ADMIN_PASSWORD}\n{token}\n", timeout=seconds + 120)
    return [json.loads(line) for line in out.splitlines()]


def _largest_gap(ping_log: Path) -> tuple[float, int]:
    """The longest wait between two echo replies, and how many replies came."""
    stamps = [float(m.group(1)) for line in ping_log.read_text().splitlines()
              if (m := REPLY.match(line))]
    assert len(stamps) >= 2, ping_log.read_text()
    return max(b - a for a, b in zip(stamps, stamps[1:], strict=False)), len(stamps)


def _summary(records: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for r in records:
        key = f"{r['kind']}:{r['status']}"
        counts[key] = counts.get(key, 0) + 1
    slowest = max((r["seconds"] for r in records), default=0.0)
    return f"{sorted(counts.items())}, slowest {slowest:.2f} s"


def test_a_locked_store_leaves_packets_alone_and_the_portal_answers_503(topo: Topology) -> None:
    subprocess.run([SSLVPN, "--data-dir", str(topo.data_dir), "user", "add", ADMIN, "--admin",
                    "--password-stdin"], input=ADMIN_PASSWORD + "\n", text=True, check=True,
                   capture_output=True, timeout=60)
    token = _api_token(topo.data_dir, ADMIN)
    topo.issue("alice", "laptop")
    profile = topo.profile("alice", "laptop", "udp")
    client_log, ping_log = topo.work / "openvpn.log", topo.work / "ping.log"
    client = topo.client_ns.spawn(["openvpn", "--config", str(profile), "--disable-dco",
                                   "--verb", "3", "--log", str(client_log)])
    assert wait_until(file_contains(client_log, CONNECTED), 30), client_log.read_text()
    ping = topo.client_ns.spawn(["ping", "-D", "-n", "-i", "0.2", VPC_HOST], log=ping_log)
    assert wait_until(file_contains(ping_log, "icmp_seq=3 "), 10), ping_log.read_text()
    holder = sqlite3.connect(topo.data_dir / DATABASE_FILE_NAME, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        during = _hammer(topo, token, LOCK_SECONDS)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    topo.lab.stop(ping)
    gap, replies = _largest_gap(ping_log)
    summary = f"largest ping gap {gap:.2f} s over {replies} replies; portal: {_summary(during)}"
    log.info("%s", summary)  # the figures (pytest --log-cli-level=INFO shows them)

    assert gap < LARGEST_PING_GAP, summary
    assert all(r["status"] not in (None, 500) for r in during), during
    assert all(r["seconds"] < ANSWER_WITHIN for r in during), summary
    refused = [r for r in during if r["status"] == 503]
    assert {"login", "api"} <= {r["kind"] for r in refused}, summary
    for r in refused:
        assert r["retry_after"], r
        wanted = "application/json" if r["kind"] == "api" else "text/html"
        assert r["type"].startswith(wanted), r

    def recovered() -> bool:
        answers = {(r["kind"], r["status"]) for r in _hammer(topo, token, 0)}
        return answers == {("login-form", 200), ("login", 303), ("page", 200), ("api", 200)}

    assert wait_until(recovered, 30, 0.5), topo.gateway_log.read_text()[-3000:]
    topo.lab.stop(client)
    said = topo.gateway_log.read_text()
    assert said.count("the store is unavailable to the portal") == 1, said[-5000:]
    assert said.count("the store is available again to the portal") == 1, said[-5000:]
    assert "Traceback" not in said, said[-5000:]
