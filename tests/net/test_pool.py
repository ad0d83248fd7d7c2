import ipaddress

import pytest

from sslvpn.net.pool import AddressPool, PoolExhausted


def test_gateway_is_first_host_and_clients_follow() -> None:
    pool = AddressPool("10.8.0.0/24")
    assert str(pool.gateway) == "10.8.0.1"
    assert str(pool.allocate()) == "10.8.0.2"
    assert str(pool.allocate()) == "10.8.0.3"
    assert pool.capacity == 253


def test_preferred_lease_is_kept_when_free() -> None:
    pool = AddressPool("10.8.0.0/24")
    assert str(pool.allocate(preferred="10.8.0.77")) == "10.8.0.77"
    # taken: the second asker gets the lowest free address instead
    assert str(pool.allocate(preferred="10.8.0.77")) == "10.8.0.2"
    pool.release("10.8.0.77")
    assert str(pool.allocate(preferred="10.8.0.77")) == "10.8.0.77"


def test_preferred_outside_the_pool_or_reserved_is_ignored() -> None:
    pool = AddressPool("10.8.0.0/24")
    assert str(pool.allocate(preferred="10.9.0.5")) == "10.8.0.2"
    assert str(pool.allocate(preferred="10.8.0.1")) == "10.8.0.3"
    assert str(pool.allocate(preferred="10.8.0.255")) == "10.8.0.4"


def test_other_leases_are_avoided_until_nothing_else_is_left() -> None:
    pool = AddressPool("10.8.0.0/29")  # clients .2 .. .6
    leased = [ipaddress.ip_address("10.8.0.2"), ipaddress.ip_address("10.8.0.3")]
    got = [str(pool.allocate(avoid=leased)) for _ in range(3)]
    assert got == ["10.8.0.4", "10.8.0.5", "10.8.0.6"]
    assert str(pool.allocate(avoid=leased)) == "10.8.0.2"
    assert str(pool.allocate(avoid=leased)) == "10.8.0.3"
    with pytest.raises(PoolExhausted):
        pool.allocate()
    assert len(pool.in_use()) == 5


def test_tiny_pool_is_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        AddressPool("10.8.0.0/31")
