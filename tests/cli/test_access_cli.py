"""`sslvpn group/rule/policy` and `user add --group`, `user groups` through CliRunner: the
contract of issue 13, one-line refusals, and `policy check` naming what decides."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from sslvpn.cli import main
from sslvpn.config import database_url
from sslvpn.store import access_queries
from sslvpn.store.db import open_engine, session

Run = Callable[..., Result]


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    monkeypatch.delenv("SSLVPN_DATABASE_URL", raising=False)
    data_dir = tmp_path / "var"

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(main, ["--data-dir", str(data_dir), *args],
                                  catch_exceptions=False)

    assert invoke("init", "--public-address", "vpn.example.test", "--vpc", "10.20.0.0/16",
                  "--vpc", "fd20::/64", "--pool6", "fd08::/64").exit_code == 0
    return invoke


def _refused(result: Result, fragment: str) -> None:
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines


def test_groups_members_rules_and_check(run: Run, tmp_path: Path) -> None:
    assert run("group", "add", "db").exit_code == 0
    assert run("group", "add", "finance").exit_code == 0
    _refused(run("group", "add", "db"), "db")
    _refused(run("user", "add", "carol", "--group", "nope"), "no group named 'nope'")
    assert "carol" not in run("user", "list").output  # refused before anything was made
    added = run("user", "add", "ann", "--group", "db", "--group", "finance")
    assert added.exit_code == 0 and "in db, finance" in added.output
    assert run("user", "groups", "ann", "--remove", "finance").output == "ann: db\n"
    assert run("user", "groups", "ann").output == "ann: db\n"

    _refused(run("rule", "add", "--group", "db", "--to", "10.99.0.0/24"),
             "not inside the VPC networks")
    _refused(run("rule", "add", "--group", "db", "--to", "10.20.1.5", "--proto", "icmp",
                 "--port", "22"), "ports need --proto tcp or udp")
    _refused(run("rule", "add", "--to", "10.20.1.5"), "one group (--group) or one user")
    assert run("rule", "add", "--group", "db", "--to", "10.20.1.5/32", "--proto", "tcp",
               "--port", "5432").output == "added rule 1\n"
    assert run("rule", "add", "--user", "ann", "--to", "fd20::/64", "--proto", "udp",
               "--port", "1000-2000", "--deny", "--priority", "5").exit_code == 0
    listed = run("rule", "list").output.splitlines()
    assert listed[1].split() == ["2", "5", "deny", "udp", "1000-2000", "fd20::/64", "user", "ann"]
    assert listed[2].split() == ["1", "100", "allow", "tcp", "5432", "10.20.1.5/32", "group",
                                 "db"]
    assert listed[-1] == "default (no rule matches): all-vpc"

    assert run("policy", "default", "nothing").exit_code == 0
    allowed = run("policy", "check", "ann", "10.20.1.5:5432/tcp").output.splitlines()
    assert allowed[0] == "allow: ann -> 10.20.1.5:5432/tcp"
    assert allowed[1].startswith("decided by: rule 1 (group db: allow tcp to 10.20.1.5/32")
    assert allowed[2] == "route: VPC network 10.20.0.0/16 through the gateway's TUN"
    assert allowed[4].startswith("pushed routes: 10.20.1.5/32 ")
    denied = run("policy", "check", "ann", "10.20.1.5:22").output.splitlines()
    assert denied[:2] == ["deny: ann -> 10.20.1.5:22/tcp", "decided by: the default (nothing)"]
    ping = run("policy", "check", "ann", "10.20.1.5").output
    assert ping.startswith("deny: ann -> 10.20.1.5 (icmp)")
    v6 = run("policy", "check", "ann", "[fd20::1]:1500/udp").output.splitlines()
    assert v6[0] == "deny: ann -> [fd20::1]:1500/udp" and "rule 2 (user ann" in v6[1]
    outside = run("policy", "check", "ann", "192.0.2.1:80").output
    assert "outside the VPC networks" in outside
    _refused(run("policy", "check", "ann", "10.20.1.5:99999"), "PORT[/tcp|udp]")
    _refused(run("policy", "check", "nobody", "10.20.1.5:22"), "no user named 'nobody'")

    engine = open_engine(database_url(tmp_path / "var", None))
    with session(engine, write=False) as s:
        before = access_queries.revision(s)
    assert run("group", "delete", "db").output == "deleted group db and its rules\n"
    with session(engine, write=False) as s:
        assert access_queries.revision(s) == before + 1
        assert [r.id for r in access_queries.list_rules(s)] == [2]
        assert access_queries.groups_of(s, user="ann") == []
    assert run("rule", "delete", "2").exit_code == 0
    _refused(run("rule", "delete", "2"), "no rule 2")

    assert run("user", "groups", "ann", "--add", "finance").exit_code == 0
    assert run("rule", "add", "--user", "ann", "--to", "10.20.0.0/24").exit_code == 0
    with session(engine, write=False) as s:
        before = access_queries.revision(s)
    assert run("user", "delete", "ann").exit_code == 0
    assert run("user", "add", "ann").exit_code == 0  # a new ann inherits nothing
    with session(engine, write=False) as s:
        assert access_queries.revision(s) > before  # the gateways reload
        policy = access_queries.load_policy(s)
        assert (policy.members, policy.user_rules) == ({}, {})
        assert access_queries.list_groups(s)[0].members == []
    engine.dispose()
