"""`sslvpn init --pool/--pool6/--vpc`: the client pools are checked against each other and the
VPC networks (the same rule as the portal's settings page), stored and shown, or refused in
one line with nothing left behind; --keepalive and --tls-groups the same way."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlmodel import select

from sslvpn.cli import main
from sslvpn.config import database_url
from sslvpn.store.db import open_engine, session
from sslvpn.store.models import GatewaySettings


def _init(data_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(
        main, ["--data-dir", str(data_dir), "init", "--public-address", "vpn.example.test", *args]
    )


def _stored(data_dir: Path) -> GatewaySettings:
    engine = open_engine(database_url(data_dir, None))
    try:
        with session(engine, write=False) as s:
            return s.exec(select(GatewaySettings)).one()
    finally:
        engine.dispose()


def test_the_ipv6_pool_and_ipv6_vpc_are_stored_and_shown(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    result = _init(data_dir, "--pool6", "fd00:8::/64", "--vpc", "10.10.0.0/24",
                   "--vpc", "fd00:10:10::/64")
    assert result.exit_code == 0, result.output
    assert "  IPv6 pool    fd00:8::/64\n" in result.output
    settings = _stored(data_dir)
    assert settings.pool6_cidr == "fd00:8::/64"
    assert settings.vpc_networks == ["10.10.0.0/24", "fd00:10:10::/64"]


def test_without_pool6_there_is_no_ipv6_pool(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    result = _init(data_dir)
    assert result.exit_code == 0, result.output
    assert "  IPv6 pool    (none)\n" in result.output
    assert _stored(data_dir).pool6_cidr is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--pool6", "nope"), "IPv6 pool 'nope' is not a network in CIDR form"),
        (("--pool6", "fd00:8::1/64"), "IPv6 pool 'fd00:8::1/64' is not a network in CIDR form"),
        (("--pool6", "10.9.0.0/24"), "IPv6 pool 10.9.0.0/24 is not an IPv6 network"),
        (("--pool6", "fd00:8::/48"), "IPv6 pool fd00:8::/48 must be a /64 to /112 network"),
        (("--pool6", "fd00:8::/120"), "IPv6 pool fd00:8::/120 must be a /64 to /112 network"),
        (("--pool6", "ff05::/64"), "must be a global or unique-local (fd00::/8) network"),
        (("--pool6", "fe80::/64"), "must be a global or unique-local (fd00::/8) network"),
        (("--pool6", "fd00:8::/64", "--vpc", "fd00:8::/48"),
         "IPv6 pool fd00:8::/64 overlaps the VPC network fd00:8::/48"),
        (("--vpc", "fd00:10:10::/64"),
         "VPC network fd00:10:10::/64 is IPv6: give an IPv6 client pool too"),
        (("--pool6", "fd00:8::/112", "--pool", "10.0.0.0/8"),
         "IPv6 pool fd00:8::/112 has fewer addresses than the IPv4 pool 10.0.0.0/8"),
        (("--vpc", "10.8.0.0/16"), "pool 10.8.0.0/24 overlaps the VPC network 10.8.0.0/16"),
        (("--pool", "10.9.0.0/24", "--vpc", "10.10.0.0/24", "--vpc", "10.9.0.64/26"),
         "pool 10.9.0.0/24 overlaps the VPC network 10.9.0.64/26"),
        (("--pool", "fd00:9::/64"), "pool fd00:9::/64 must be an IPv4 network of /29 or larger"),
        # dangerous networks, each refused with the reason
        (("--pool", "0.0.0.0/0"), "pool 0.0.0.0/0 must be private unicast space"),
        (("--pool", "127.0.0.0/8"), "pool 127.0.0.0/8 must be private unicast space"),
        (("--pool", "224.0.0.0/4"), "pool 224.0.0.0/4 must be private unicast space"),
        (("--pool", "198.51.100.0/24"), "would shadow real ones"),
        (("--vpc", "169.254.169.254/32"),
         "VPC network 169.254.169.254/32 overlaps 169.254.0.0/16 (link-local: the cloud's "
         "instance metadata service"),
        (("--vpc", "0.0.0.0/0"), "VPC network 0.0.0.0/0 overlaps 169.254.0.0/16"),
        (("--vpc", "127.0.0.1/32"), "overlaps 127.0.0.0/8 (loopback"),
    ],
)
def test_bad_pools_are_one_line_and_leave_nothing(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    data_dir = tmp_path / "var"
    result = _init(data_dir, *args)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert not data_dir.exists()


def test_a_pool_beside_the_vpc_is_accepted(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    result = _init(data_dir, "--pool", "10.9.0.0/24", "--vpc", "10.8.0.0/24",
                   "--vpc", "10.9.1.0/24")
    assert result.exit_code == 0, result.output
    assert _stored(data_dir).pool_cidr == "10.9.0.0/24"


def test_the_pushed_keepalive_is_chosen_at_init(tmp_path: Path) -> None:
    """Defaults put a client of a dead node on a live one within 30 s (restart 12 s, then
    at most a 5 s server-poll-timeout on each dead remote); like OpenVPN's `keepalive`, the
    restart waits at least two pings."""
    result = _init(tmp_path / "one")
    assert result.exit_code == 0, result.output
    assert "  keepalive    ping 5 s, restart 12 s\n" in result.output
    stored = _stored(tmp_path / "one")
    assert (stored.keepalive_interval, stored.keepalive_timeout) == (5, 12)
    assert _init(tmp_path / "two", "--keepalive", "10", "60").exit_code == 0
    stored = _stored(tmp_path / "two")
    assert (stored.keepalive_interval, stored.keepalive_timeout) == (10, 60)
    refused = _init(tmp_path / "three", "--keepalive", "10", "15")
    assert refused.exit_code == 1
    assert refused.stderr.strip() == (
        "error: keepalive restart 15 s must be at least twice the ping 10 s")
    assert not (tmp_path / "three").exists()


def test_the_tls_groups_are_chosen_at_init(tmp_path: Path) -> None:
    """The hybrid post-quantum group first by default; a list OpenSSL refuses is one line."""
    result = _init(tmp_path / "one")
    assert "  TLS groups   X25519MLKEM768:X25519:P-256\n" in result.output
    assert _stored(tmp_path / "one").tls_groups == "X25519MLKEM768:X25519:P-256"
    assert _init(tmp_path / "two", "--tls-groups", "X25519:P-256").exit_code == 0
    assert _stored(tmp_path / "two").tls_groups == "X25519:P-256"
    refused = _init(tmp_path / "three", "--tls-groups", "X25519:kyber")
    assert refused.exit_code == 1
    assert refused.stderr.strip().startswith(
        "error: TLS groups 'X25519:kyber': this OpenSSL does not know one of these groups")
    assert not (tmp_path / "three").exists()


def test_client_caps_and_force_cookie_are_chosen_at_init(tmp_path: Path) -> None:
    """No cap beyond the pool and force-cookie on by default; both can be set."""
    result = _init(tmp_path / "one")
    assert "  max clients  pool size in all, no cap per address; tls-crypt-v2 force-cookie " \
        "on\n" in result.output
    stored = _stored(tmp_path / "one")
    assert (stored.max_clients, stored.max_clients_per_address) == (0, 0)
    assert stored.tls_crypt_v2_force_cookie
    assert _init(tmp_path / "two", "--max-clients", "5000", "--max-clients-per-address", "20",
                 "--no-tls-crypt-v2-force-cookie").exit_code == 0
    stored = _stored(tmp_path / "two")
    assert (stored.max_clients, stored.max_clients_per_address) == (5000, 20)
    assert not stored.tls_crypt_v2_force_cookie


def test_init_warns_when_no_vpc_network_is_configured(tmp_path: Path) -> None:
    """Clients of a gateway without a VPC network connect and reach nothing: say so."""
    bare = _init(tmp_path / "bare")
    assert bare.exit_code == 0, bare.output
    assert "warning: no VPC network is configured: clients connect but reach nothing." in (
        bare.stderr)
    routed = _init(tmp_path / "routed", "--vpc", "10.10.0.0/24")
    assert routed.exit_code == 0 and "no VPC network" not in routed.output
