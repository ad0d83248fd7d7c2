"""`sslvpn node add/list/remove/routes` and fleet profiles, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import update
from sqlmodel import select

from sslvpn.cli import main
from sslvpn.cli import sessions as sessions_cli
from sslvpn.config import database_url
from sslvpn.store import node_queries, queries
from sslvpn.store.db import open_engine, session
from sslvpn.store.models import Node, VpnSessionRecord, utcnow

Run = Callable[..., Result]
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return database_url(tmp_path / "var", None)
    postgres: str = request.getfixturevalue("empty_postgres_url")
    return postgres


@pytest.fixture
def run(tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> Run:
    """The CLI on an initialised fleet: pool 10.8.0.0/24, IPv6 pool fd00:8::/64."""
    monkeypatch.delenv("SSLVPN_CA_PASSPHRASE", raising=False)

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(
            main, ["--data-dir", str(tmp_path / "var"), "--database-url", url, *args],
            catch_exceptions=False,
        )

    done = invoke("init", "--public-address", "vpn.example.test", "--pool", "10.8.0.0/24",
                  "--pool6", "fd00:8::/64", "--vpc", "10.20.0.0/16")
    assert done.exit_code == 0, done.output
    return invoke


def _ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def _refused(result: Result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0].removeprefix("error: ")


def _nodes(run: Run) -> list[dict[str, object]]:
    listed: list[dict[str, object]] = json.loads(_ok(run("node", "list", "--json")))
    return listed


def test_nodes_are_added_listed_routed_and_removed(run: Run) -> None:
    assert _ok(run("node", "list")) == "no nodes: `sslvpn serve` runs as the single gateway\n"
    added = _ok(run("node", "add", "a", "--public-address", "198.18.0.1"))
    assert added.splitlines()[0] == (
        "added node a: clients get addresses from 10.8.0.0/26 and fd00:8::/122")
    _ok(run("node", "add", "b", "--public-address", "198.18.0.2", "--public-address",
            "b.example.test", "--pool", "10.8.0.128/25", "--vpc-address", "10.20.0.12"))
    assert _nodes(run) == [
        {"name": "a", "public_addresses": ["198.18.0.1"], "pool": "10.8.0.0/26",
         "pool6": "fd00:8::/122", "state": "down", "sessions": 0, "software_version": None,
         "last_seen": None},
        {"name": "b", "public_addresses": ["198.18.0.2", "b.example.test"],
         "pool": "10.8.0.128/25", "pool6": "fd00:8::80/121", "state": "down", "sessions": 0,
         "software_version": None, "last_seen": None},
    ]
    table = _ok(run("node", "list")).splitlines()
    assert table[0].split()[:4] == ["NAME", "STATE", "SESSIONS", "POOL"]
    assert table[2].split() == ["b", "down", "0", "10.8.0.128/25", "fd00:8::80/121", "-",
                                "never", "198.18.0.2,", "b.example.test"]
    routes = _ok(run("node", "routes")).splitlines()
    assert "manual step in your cloud console" in routes[0]
    assert [line.split()[:3] for line in routes[2:6]] == [
        ["10.8.0.0/26", "(unknown)", "a"], ["fd00:8::/122", "(unknown)", "a"],
        ["10.8.0.128/25", "10.20.0.12", "b"], ["fd00:8::80/121", "(unknown)", "b"],
    ]
    assert routes[6].startswith("(unknown): the node reports its VPC-side address")
    assert json.loads(_ok(run("node", "routes", "--json")))[2] == {
        "node": "b", "destination": "10.8.0.128/25", "next_hop": "10.20.0.12"}
    assert _ok(run("node", "remove", "a")) == "removed node a\n"
    assert [n["name"] for n in _nodes(run)] == ["b"]
    assert _ok(run("node", "add", "c", "--public-address", "198.18.0.3")).startswith(
        "added node c: clients get addresses from 10.8.0.0/26")  # a's freed block


@pytest.mark.parametrize(("args", "message"), [
    (("--pool", "10.8.0.32/27"), "pool 10.8.0.32/27 overlaps node a's pool 10.8.0.0/26"),
    (("--pool", "10.9.0.0/26"), "pool 10.9.0.0/26 is outside the fleet pool 10.8.0.0/24"),
    (("--pool", "10.8.0.64/30"), "pool 10.8.0.64/30 is too small: a node needs a /29 or larger"),
    (("--pool6", "fd00:8::/120"),
     "IPv6 pool fd00:8::/120 overlaps node a's IPv6 pool fd00:8::/122"),
    (("--vpc-address", "10.20.0.1", "--vpc-address", "10.20.0.2"),
     "give at most one IPv4 VPC address"),
])
def test_a_refused_node_is_one_line_and_nothing_is_written(
    run: Run, args: tuple[str, ...], message: str
) -> None:
    _ok(run("node", "add", "a", "--public-address", "198.18.0.1"))
    assert _refused(run("node", "add", "b", "--public-address", "198.18.0.2", *args)) == message
    assert [n["name"] for n in _nodes(run)] == ["a"]


def test_names_and_addresses_are_checked(run: Run) -> None:
    _ok(run("node", "add", "a", "--public-address", "198.18.0.1"))
    assert _refused(run("node", "add", "a", "--public-address", "198.18.0.9")) == (
        "node 'a' already exists")
    assert _refused(run("node", "add", "a/b", "--public-address", "198.18.0.9")).startswith(
        "node name 'a/b' is not allowed")
    assert _refused(run("node", "add", "b", "--public-address", "evil\nup /bin/sh")) == (
        "give at least one public address (a DNS name or IP address)")
    assert _refused(run("node", "remove", "nobody")) == "no node named 'nobody'"


def test_remove_is_refused_while_the_node_has_live_sessions_unless_forced(
    run: Run, url: str
) -> None:
    _ok(run("node", "add", "a", "--public-address", "198.18.0.1"))
    engine = open_engine(url)
    try:
        with session(engine, write=True) as s:
            queries.open_session_record(
                s, session_id="udp-1", gateway_name="default", node="a", user_name="alice",
                certificate_serial="ab", real_address="198.51.100.7:5000",
                vpn_address="10.8.0.2", protocol="udp", connected_at=utcnow())
        assert _nodes(run)[0]["sessions"] == 1
        assert _refused(run("node", "remove", "a")) == (
            "node a has 1 live session; stop it first or force the removal")
        assert _ok(run("node", "remove", "a", "--force")) == "removed node a; 1 session ended\n"
        with session(engine, write=False) as s:
            [record] = s.exec(select(VpnSessionRecord)).all()
        assert record.disconnect_reason == "node removed" and record.disconnected_at
    finally:
        engine.dispose()


def test_state_follows_the_heartbeat_age_on_the_database_clock(run: Run, url: str) -> None:
    _ok(run("node", "add", "a", "--public-address", "198.18.0.1"))
    engine = open_engine(url)
    try:
        with session(engine, write=True) as s:
            assert node_queries.beat(s, name="a", software_version="9.9",
                                     seen_vpc_addresses=["10.20.0.11"])
            assert not node_queries.beat(s, name="gone", software_version="9.9",
                                         seen_vpc_addresses=[])
        [node] = _nodes(run)
        assert (node["state"], node["software_version"]) == ("up", "9.9")
        assert _ok(run("node", "routes")).splitlines()[2].split()[:2] == [
            "10.8.0.0/26", "10.20.0.11"]
        with session(engine, write=True) as s:  # 16 s of silence: past the 15 s default
            now = node_queries.database_now(s)
            s.execute(update(Node).values(heartbeat_at=now - timedelta(seconds=16)))
        assert _nodes(run)[0]["state"] == "down"
    finally:
        engine.dispose()


def test_fleet_profiles_list_every_node_udp_first_with_remote_random(run: Run) -> None:
    _ok(run("user", "add", "alice"))
    _ok(run("cert", "issue", "alice"))
    single = _ok(run("profile", "alice"))
    assert re.findall(r"^remote .*$", single, re.M) == [
        "remote vpn.example.test 1194 udp", "remote vpn.example.test 1194 tcp-client"]
    _ok(run("node", "add", "a", "--public-address", "198.18.0.1"))
    before_b = _ok(run("profile", "alice"))
    _ok(run("node", "add", "b", "--public-address", "198.18.0.2", "--public-address",
            "198.18.0.1"))  # an address two nodes share is listed once
    fleet = _ok(run("profile", "alice"))
    assert re.findall(r"^(?:remote |remote-random|server-poll).*$", fleet, re.M) == [
        "remote 198.18.0.1 1194 udp",
        "remote 198.18.0.2 1194 udp",
        "remote 198.18.0.1 1194 tcp-client",
        "remote 198.18.0.2 1194 tcp-client",
        "remote-random",
        "server-poll-timeout 5",
    ]
    # made before b was added: it lists a only, and a accepts it as before (same CA, same
    # server name, same keys: nothing in a profile depends on the set of nodes)
    assert re.findall(r"^remote .*$", before_b, re.M) == [
        "remote 198.18.0.1 1194 udp", "remote 198.18.0.1 1194 tcp-client"]
    assert "remote-random" not in before_b
    unchanged = re.compile(r"^(?!remote |remote-random|server-poll).*$", re.M)
    assert unchanged.findall(before_b) == unchanged.findall(fleet)


def _open_record(url: str, session_id: str, node: str, address: str) -> None:
    engine = open_engine(url)
    try:
        with session(engine, write=True) as s:
            queries.open_session_record(
                s, session_id=session_id, gateway_name="default", node=node,
                user_name="alice", certificate_serial="ab", real_address="198.51.100.7:5000",
                vpn_address=address, protocol="udp", connected_at=utcnow())
    finally:
        engine.dispose()


def _act_as_node(url: str, stop: threading.Event) -> None:
    """What the node holding a session does when asked to end it: end it in the store."""
    engine = open_engine(url)
    try:
        while not stop.wait(0.05):
            with session(engine, write=True) as s:
                for record in queries.list_session_records(s, open_only=True):
                    if record.end_requested:
                        queries.close_session_record(s, session_id=record.session_id,
                                                     at=utcnow(), reason=record.end_requested)
    finally:
        engine.dispose()


def test_sessions_and_kick_see_every_nodes_sessions_through_the_store(
    run: Run, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ok(run("node", "add", "a", "--public-address", "198.18.0.1"))
    _ok(run("node", "add", "b", "--public-address", "198.18.0.2"))
    _open_record(url, "udp-1", "a", "10.8.0.2")
    _open_record(url, "udp-2", "b", "10.8.0.66")
    listed = json.loads(_ok(run("sessions", "--json")))["sessions"]
    assert [(s["session_id"], s["node"], s["last_activity"]) for s in listed] == [
        ("udp-1", "a", None), ("udp-2", "b", None)]
    table = _ok(run("sessions")).splitlines()
    assert table[0].split()[:3] == ["SESSION", "NODE", "USER"]
    assert table[2].split()[:3] == ["udp-2", "b", "alice"]
    stop = threading.Event()
    node = threading.Thread(target=_act_as_node, args=(url, stop))
    node.start()
    try:
        assert _ok(run("kick", "udp-2")) == "ended 1 session\n"
    finally:
        stop.set()
        node.join()
    monkeypatch.setattr(sessions_cli, "KICK_WAIT", 0.2)  # nobody carries out this one
    assert _ok(run("kick", "alice", "--reason", "bye")) == (
        "asked 1 session to end; 1 still live after 0.2 s (is its node down? see "
        "`sslvpn node list`)\n")
    assert run("kick", "nobody").exit_code == 1
    listed = json.loads(_ok(run("sessions", "--json")))["sessions"]
    assert [s["session_id"] for s in listed] == ["udp-1"]
