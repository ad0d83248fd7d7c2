"""`sslvpn ipsec ...` against a real SQLite store: happy paths and one-line errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from sslvpn.cli import main
from sslvpn.config import database_url
from sslvpn.store.db import open_engine, session
from sslvpn.store.ipsec_queries import get_tunnel, set_tunnel_owner
from sslvpn.store.node_queries import add_node

PSK = "Zq8-lab-psk-0123456789abcdef"
Run = Callable[..., Result]


@pytest.fixture
def run(tmp_path: Path) -> Run:
    runner = CliRunner()

    def invoke(*args: str, stdin: str | None = None) -> Result:
        return runner.invoke(main, ["--data-dir", str(tmp_path), "ipsec", *args], input=stdin)

    return invoke


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def fails(result: Result, message: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert message in lines[0]


def _setup(run: Run) -> None:
    ok(run("gateway", "add", "vgw", "--public-address", "198.18.0.2", "--bandwidth", "1G"))
    ok(run("customer-gateway", "add", "dc1", "--address", "198.18.0.1"))
    ok(run("customer-gateway", "add", "dc2", "--address", "198.18.1.1"))
    ok(run("tunnel", "add", "t1", "--gateway", "vgw", "--customer-gateway", "dc1",
           "--psk-stdin", "--ike", "aes256-sha256-modp2048,aes256gcm16-prfsha256-curve25519",
           "--esp", "aes256-sha256", "--wait", stdin=PSK + "\n"))
    ok(run("policy", "add", "t1", "--local", "10.2.0.0/24", "--peer", "10.1.0.0/24"))


def test_objects_round_trip_and_keys_stay_secret(run: Run, tmp_path: Path) -> None:
    _setup(run)
    psk_file = tmp_path / "psk"
    psk_file.write_text(PSK + "-two\n")
    ok(run("tunnel", "add", "t2", "--gateway", "vgw", "--customer-gateway", "dc2",
           "--psk-file", str(psk_file)))
    assert "1G" in ok(run("gateway", "list"))
    listing = ok(run("tunnel", "list"))
    assert "t1" in listing and "aes256-sha256-modp2048" in listing and "wait" in listing
    assert listing.splitlines()[2].split()[3:5] == ["default", "default"]  # t2: defaults
    assert PSK not in listing
    assert "10.1.0.0/24" in ok(run("policy", "list", "t1"))
    ok(run("down", "t1"))
    assert "down" in ok(run("tunnel", "list")).splitlines()[1]
    ok(run("up", "t1"))
    ok(run("policy", "delete", "t1", "--local", "10.2.0.0/24", "--peer", "10.1.0.0/24"))
    assert "10.1.0.0" not in ok(run("policy", "list"))
    ok(run("tunnel", "delete", "t1"))
    ok(run("customer-gateway", "delete", "dc1"))
    assert "dc1" not in ok(run("customer-gateway", "list"))


def test_status_without_a_running_gateway(run: Run) -> None:
    _setup(run)
    rows = json.loads(ok(run("status", "--json")))
    assert rows[0]["name"] == "t1" and rows[0]["state"] == "down"
    assert "no gateway running" in rows[0]["last_error"]
    assert "t1" in ok(run("status"))


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("customer-gateway", "add", "x", "--address", "224.0.0.1"), None, "multicast"),
        (("customer-gateway", "add", "x", "--address", "dc.example"), None, "not an IP address"),
        (("customer-gateway", "add", "dc1", "--address", "198.18.5.5"), None, "already exists"),
        (("gateway", "add", "g2", "--public-address", "198.18.0.9", "--bandwidth", "fast"), None,
         "not a rate"),
        (("tunnel", "add", "t9", "--gateway", "vgw", "--customer-gateway", "dc2", "--psk-stdin"),
         "short\n", "too short"),
        (("tunnel", "add", "t9", "--gateway", "vgw", "--customer-gateway", "dc2"), None,
         "exactly one of --psk-stdin or --psk-file"),
        (("tunnel", "add", "t9", "--gateway", "vgw", "--customer-gateway", "dc2", "--psk-stdin",
          "--ike", "aes256-md5-modp1024"), PSK, "unsupported algorithm"),
        (("tunnel", "add", "t9", "--gateway", "nope", "--customer-gateway", "dc2", "--psk-stdin"),
         PSK, "no VPN gateway named 'nope'"),
        (("policy", "add", "t1", "--local", "10.2.0.0/16", "--peer", "10.2.3.0/24"), None,
         "overlaps peer range"),
        (("policy", "add", "t1", "--local", "10.2.0.1/24", "--peer", "10.9.0.0/24"), None,
         "did you mean 10.2.0.0/24"),
        (("policy", "add", "t1", "--local", "10.2.0.0/24", "--peer", "10.1.0.0/24"), None,
         "already has policy"),
        (("policy", "add", "t1", "--local", "10.1.0.0/24", "--peer", "10.5.0.0/24"), None,
         "local range 10.1.0.0/24 overlaps 10.1.0.0/24, a peer range of tunnel 't1'"),
        (("gateway", "delete", "vgw"), None, "still has tunnels: t1"),
        (("tunnel", "add", "t9", "--gateway", "vgw", "--customer-gateway", "dc1", "--psk-stdin"),
         PSK, "tunnel 't1' already connects 'vgw' to 'dc1'"),
        (("up", "nope"), None, "no tunnel named 'nope'"),
        # one check per field, shared with the portal and the API
        (("gateway", "add", "x/../y", "--public-address", "198.18.0.9"), None,
         "VPN gateway name 'x/../y' is not allowed"),
        (("customer-gateway", "add", "x/../y", "--address", "198.18.5.5"), None,
         "customer gateway name 'x/../y' is not allowed"),
        (("tunnel", "add", "x/../y", "--gateway", "vgw", "--customer-gateway", "dc2",
          "--psk-stdin"), PSK, "tunnel name 'x/../y' is not allowed"),
        (("gateway", "add", "g2", "--public-address", "198.18.0.9", "--bandwidth", "99999999T"),
         None, "bandwidth must be 1 kbit/s to 10 Tbit/s"),
        (("gateway", "add", "g2", "--public-address", "198.18.0.9", "--bandwidth", "9" * 400),
         None, "far above any link"),
    ],
)
def test_errors_are_one_clear_line(
    run: Run, args: tuple[str, ...], stdin: str | None, message: str
) -> None:
    _setup(run)
    fails(run(*args, stdin=stdin), message)


def test_peer_ranges_may_not_overlap_another_tunnel_on_the_gateway(run: Run) -> None:
    _setup(run)
    ok(run("tunnel", "add", "t2", "--gateway", "vgw", "--customer-gateway", "dc2", "--psk-stdin",
           stdin=PSK))
    fails(run("policy", "add", "t2", "--local", "10.2.0.0/24", "--peer", "10.1.0.0/16"),
          "a peer range of tunnel 't1'")
    ok(run("policy", "add", "t2", "--local", "10.2.0.0/24", "--peer", "10.3.0.0/24"))


def test_a_binary_psk_file_is_named(run: Run, tmp_path: Path) -> None:
    _setup(run)
    psk_file = tmp_path / "psk.bin"
    psk_file.write_bytes(b"\xff\xfe" + bytes(range(256)))
    fails(run("tunnel", "add", "t2", "--gateway", "vgw", "--customer-gateway", "dc2",
              "--psk-file", str(psk_file)), f"{psk_file}: holds binary data, not text")


def test_a_fleet_gateway_names_its_nodes_and_status_shows_the_holder(
    run: Run, tmp_path: Path
) -> None:
    ok(run("gateway", "list"))  # makes the store
    engine = open_engine(database_url(tmp_path, None))
    with session(engine, write=True) as s:
        add_node(s, name="a", public_addresses=["198.18.0.2"], pool_cidr="10.8.0.0/26")
        add_node(s, name="b", public_addresses=["198.18.0.3"], pool_cidr="10.8.0.64/26")
    fails(run("gateway", "add", "fgw", "--public-address", "198.18.0.5", "--node", "x"),
          "no node named 'x'")
    fails(run("gateway", "add", "fgw", "--public-address", "198.18.0.5", "--node", "a",
              "--node", "a"), "a node is named twice")
    assert "on nodes a, b" in ok(run("gateway", "add", "fgw", "--public-address", "198.18.0.5",
                                     "--node", "a", "--node", "b", "--on-activate", "true"))
    assert "a,b" in ok(run("gateway", "list"))
    ok(run("customer-gateway", "add", "dc1", "--address", "198.18.0.1"))
    ok(run("tunnel", "add", "t1", "--gateway", "fgw", "--customer-gateway", "dc1",
           "--psk-stdin", stdin=PSK + "\n"))
    [row] = json.loads(ok(run("status", "--json")))
    assert (row["state"], row["node"], row["node_since"]) == ("down", None, None)
    with session(engine, write=True) as s:
        set_tunnel_owner(s, tunnel_id=get_tunnel(s, name="t1").id or 0, node="b")
    [row] = json.loads(ok(run("status", "--json")))
    assert (row["state"], row["node"], row["last_error"]) == ("elsewhere", "b", None)
    assert row["node_since"] is not None
    assert ok(run("status")).splitlines()[1].split()[:3] == ["t1", "b", "elsewhere"]
    # the peer's configuration accepts every node's address; the gateway's is its identity
    swanctl = ok(run("tunnel", "config", "t1", "--format", "swanctl"))
    assert "remote_addrs = 198.18.0.5, 198.18.0.2, 198.18.0.3\n" in swanctl
    assert "id = 198.18.0.5\n" in swanctl
    engine.dispose()


def test_tunnel_config_renders_the_peers_side_in_each_format(run: Run) -> None:
    _setup(run)
    swanctl = ok(run("tunnel", "config", "t1", "--format", "swanctl"))
    assert "local_addrs = 198.18.0.1\n" in swanctl and "remote_addrs = 198.18.0.2\n" in swanctl
    assert "local_ts = 10.1.0.0/24\n" in swanctl and "remote_ts = 10.2.0.0/24\n" in swanctl
    assert "proposals = aes256-sha256-modp2048,aes256gcm16-prfsha256-curve25519\n" in swanctl
    assert "start_action = start" in swanctl  # t1 waits for the peer
    assert PSK not in swanctl
    assert f'secret = "{PSK}"' in ok(run("tunnel", "config", "t1", "--format", "swanctl",
                                         "--include-psk"))
    assert "conn t1\n" in ok(run("tunnel", "config", "t1", "--format", "strongswan-ipsec"))
    assert "ike=aes256-sha2_256-modp2048,aes_gcm256-sha2_256-dh31\n" in ok(
        run("tunnel", "config", "t1", "--format", "libreswan"))
    assert "10.1.0.0/24" in ok(run("tunnel", "config", "t1", "--format", "text"))
    fails(run("tunnel", "config", "nope", "--format", "text"), "no tunnel named 'nope'")
    bad = run("tunnel", "config", "t1", "--format", "cisco")
    assert bad.exit_code == 2 and "'cisco' is not one of" in bad.output


def test_tunnel_timers_are_set_shown_and_checked(run: Run) -> None:
    _setup(run)
    ok(run("tunnel", "add", "t2", "--gateway", "vgw", "--customer-gateway", "dc2", "--psk-stdin",
           "--on-traffic", "--dpd-delay", "10s", "--child-lifetime", "20m", stdin=PSK))
    changed = ok(run("tunnel", "set", "t2", "--dpd-action", "clear", "--retransmit-limit", "0",
                     "--rekey-margin", "2m", "--fragment-size", "1400"))
    assert "dpd 10s/30s clear" in changed and "child 20m" in changed and "limit 0s" in changed
    assert changed.endswith("fragments 1400 bytes\n"), changed
    rows = {r["name"]: r for r in json.loads(ok(run("status", "--json")))}
    assert rows["t2"]["settings"] == {
        "start_action": "trap", "dpd_delay": 10.0, "dpd_timeout": 30.0, "dpd_action": "clear",
        "ike_lifetime": 10800.0, "child_lifetime": 1200.0, "rekey_margin": 120.0,
        "rekey_fuzz": 100, "retransmit_timeout": 4.0, "retransmit_tries": 5,
        "retransmit_base": 1.8, "retransmit_limit": 0.0, "fragment_size": 1400}
    assert rows["t1"]["settings"]["start_action"] == "wait"
    text = ok(run("status"))
    assert "t1: start wait, dpd 30s/30s restart, ike 3h, child 1h" in text
    assert "limit 20s, fragments 1280 bytes\n" in text
    ok(run("tunnel", "set", "t2", "--initiate"))
    assert "initiate" in ok(run("tunnel", "list")).splitlines()[2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--dpd-delay", "soon"), "dpd delay must be a duration like 30s, 5m or 1h, not 'soon'"),
        (("--dpd-timeout", "2h"), "dpd timeout must be 0 (off) or 1s to 1h, not 2h"),
        (("--dpd-action", "hold"), "dpd action must be one of restart, clear, none, not 'hold'"),
        (("--child-lifetime", "5s"), "child lifetime must be 10s to 7d, not 5s"),
        (("--rekey-margin", "40m"), "rekey margin 40m plus 100% fuzz must be shorter than the "
                                    "child lifetime 1h"),
        (("--rekey-fuzz", "300"), "rekey fuzz must be 0% to 200%, not 300%"),
        (("--retransmit-tries", "many"), "retransmit tries must be a number, not 'many'"),
        (("--retransmit-base", "9"), "retransmit base must be 1 to 4, not 9"),
        (("--fragment-size", "200"), "fragment size must be 220 to 65535 bytes (the largest "
                                     "IKE datagram), not 200"),
        (("--fragment-size", "65536"), "fragment size must be 220 to 65535 bytes"),
        (("--fragment-size", "1.4k"), "fragment size must be a number, not '1.4k'"),
        ((), "nothing to change"),
    ],
)
def test_bad_tunnel_settings_are_one_clear_line(
    run: Run, args: tuple[str, ...], message: str
) -> None:
    _setup(run)
    fails(run("tunnel", "set", "t1", *args), message)
    if args:
        fails(run("tunnel", "add", "t2", "--gateway", "vgw", "--customer-gateway", "dc2",
                  "--psk-stdin", *args, stdin=PSK), message)


@pytest.mark.parametrize("action", [("rekey", "--ike"), ("rekey",), ("restart",), ("down",)])
def test_live_actions_need_a_running_gateway(run: Run, action: tuple[str, ...]) -> None:
    _setup(run)
    fails(run("tunnel", action[0], "t1", *action[1:]), "no gateway running")
    fails(run("tunnel", action[0], "nope", *action[1:]), "no tunnel named 'nope'")


def test_ipsec_ranges_may_not_overlap_the_vpn_client_pool(run: Run, tmp_path: Path) -> None:
    init = CliRunner().invoke(main, ["--data-dir", str(tmp_path), "init", "--public-address",
                                     "198.18.0.2", "--pool", "10.8.0.0/24"])
    assert init.exit_code == 0, init.output
    _setup(run)
    fails(run("policy", "add", "t1", "--local", "10.8.0.0/16", "--peer", "10.77.0.0/24"),
          "local range 10.8.0.0/16 overlaps the VPN client pool 10.8.0.0/24")
    fails(run("policy", "add", "t1", "--local", "10.3.0.0/24", "--peer", "10.8.0.128/25"),
          "peer range 10.8.0.128/25 overlaps the VPN client pool 10.8.0.0/24")
