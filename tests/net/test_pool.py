import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sslvpn.net.pool import AddressPool, PoolExhausted


def test_gateway_is_first_host_and_clients_follow() -> None:
    pool = AddressPool("10.8.0.0/24")
    assert str(pool.gateway) == "10.8.0.1"
    assert str(pool.allocate("a")) == "10.8.0.2"
    assert str(pool.allocate("b")) == "10.8.0.3"
    assert pool.capacity == 253
    assert {o: str(a) for o, a in pool.leases().items()} == {"a": "10.8.0.2", "b": "10.8.0.3"}


def test_lease_is_kept_when_free() -> None:
    pool = AddressPool("10.8.0.0/24")
    pool.restore_leases({"a": "10.8.0.77"})
    assert str(pool.allocate("a")) == "10.8.0.77"
    # in use: a second session of "a" gets the lowest free address, which becomes its lease
    assert str(pool.allocate("a")) == "10.8.0.2"
    assert str(pool.lease_of("a")) == "10.8.0.2"
    pool.release("10.8.0.2")
    pool.release("10.8.0.77")
    assert str(pool.allocate("a")) == "10.8.0.2"
    assert str(pool.allocate("b")) == "10.8.0.3"  # .77 is nobody's lease now, but higher
    assert pool.lease_of("c") is None


def test_leases_outside_the_pool_or_reserved_are_ignored() -> None:
    pool = AddressPool("10.8.0.0/24")
    pool.restore_leases({"a": "10.9.0.5", "b": "10.8.0.1", "c": "10.8.0.255", "d": "fd00::5"})
    assert pool.leases() == {}
    assert [str(pool.allocate(o)) for o in "abc"] == ["10.8.0.2", "10.8.0.3", "10.8.0.4"]


def test_other_leases_are_avoided_until_nothing_else_is_left() -> None:
    pool = AddressPool("10.8.0.0/29")  # clients .2 .. .6
    pool.restore_leases({"x": "10.8.0.2", "y": "10.8.0.3"})
    got = [str(pool.allocate(owner)) for owner in "abc"]
    assert got == ["10.8.0.4", "10.8.0.5", "10.8.0.6"]
    assert str(pool.allocate("d")) == "10.8.0.2"  # taken from x, whose lease is gone
    assert pool.lease_of("x") is None
    assert str(pool.allocate("x")) == "10.8.0.3"
    with pytest.raises(PoolExhausted):
        pool.allocate("e")
    assert len(pool.in_use()) == 5
    pool.release("10.8.0.5")
    assert str(pool.allocate("e")) == "10.8.0.5"


def test_tiny_pool_is_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        AddressPool("10.8.0.0/31")


class Reference:
    """The rule, written as a plain scan over the whole pool."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last
        self.in_use: set[int] = set()
        self.lease: dict[str, int] = {}

    def allocate(self, owner: str) -> int | None:
        held = self.lease.get(owner)
        if held is None or held in self.in_use:
            leased = set(self.lease.values())
            free = [v for v in range(self.first, self.last + 1) if v not in self.in_use]
            if not free:
                return None
            held = next((v for v in free if v not in leased), free[0])
        self.lease = {o: v for o, v in self.lease.items() if v != held}
        self.lease[owner] = held
        self.in_use.add(held)
        return held


OPS = st.lists(st.tuples(st.booleans(), st.integers(0, 7)), max_size=200)


@settings(max_examples=300, deadline=None)
@given(OPS, st.dictionaries(st.integers(0, 7), st.integers(2, 6), max_size=4))
def test_allocation_matches_the_plain_scan(ops: list[tuple[bool, int]],
                                           stored: dict[int, int]) -> None:
    pool = AddressPool("10.8.0.0/29")  # clients .2 .. .6: often full, leases taken over
    base = int(pool.network.network_address)
    restored: dict[str, str] = {}
    for n, host in stored.items():
        if host not in {int(ipaddress.ip_address(a)) - base for a in restored.values()}:
            restored[f"o{n}"] = str(ipaddress.ip_address(base + host))  # unique, as stored
    reference = Reference(base + 2, base + 6)
    reference.lease = {o: int(ipaddress.ip_address(a)) for o, a in restored.items()}
    pool.restore_leases(restored)
    live: dict[str, list[int]] = {}
    for allocate, n in ops:
        owner = f"o{n}"
        if allocate:
            expected = reference.allocate(owner)
            if expected is None:
                with pytest.raises(PoolExhausted):
                    pool.allocate(owner)
                continue
            assert int(pool.allocate(owner)) == expected
            live.setdefault(owner, []).append(expected)
        elif live.get(owner):
            value = live[owner].pop(0)
            pool.release(ipaddress.ip_address(value))
            reference.in_use.discard(value)
        assert {o: int(a) for o, a in pool.leases().items()} == reference.lease


def test_many_sessions_churn_without_scanning() -> None:
    pool = AddressPool("10.0.0.0/16")
    owners = [f"c{i}" for i in range(20_000)]
    first = {o: pool.allocate(o) for o in owners}
    for owner in owners[::2]:
        pool.release(first[owner])
    for owner in owners[::2]:  # returning clients find their own address again
        assert pool.allocate(owner) == first[owner]
    assert len(pool.in_use()) == 20_000
