"""Admission of new OpenVPN clients: caps, half-open budgets, fair eviction, refusals."""

from __future__ import annotations

import logging

import pytest

from sslvpn.runtime.admission import LOG_INTERVAL, Admission, AdmissionLimits, Slot, source_of
from sslvpn.runtime.control import ListenerStatus, combined


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _take(admission: Admission, host: str, evicted: list[str] | None = None,
          protocol: str = "tcp") -> Slot | None:
    return admission.take(host, protocol,
                          lambda: evicted.append(host) if evicted is not None else None)


def test_one_address_holds_at_most_its_half_open_budget() -> None:
    admission = Admission(AdmissionLimits(half_open_per_address=3))
    slots = [_take(admission, "192.0.2.1") for _ in range(5)]
    assert [s is not None for s in slots] == [True, True, True, False, False]
    assert _take(admission, "192.0.2.2") is not None  # another address is not affected
    assert admission.refused == {"half-open-per-address": 2}
    assert admission.status().top_refused_sources == {"192.0.2.1": 2}
    first = slots[0]
    assert first is not None
    first.authenticated()  # admitted: no longer counts against the budget
    assert _take(admission, "192.0.2.1") is not None
    assert admission.half_open == {"udp": 0, "tcp": 4} and admission.clients == 5


def test_a_full_half_open_cap_evicts_from_the_biggest_holder_not_the_newcomer() -> None:
    admission = Admission(AdmissionLimits(half_open_per_address=4, half_open_max=4))
    evicted: list[str] = []
    flood = [_take(admission, "203.0.113.9", evicted) for _ in range(4)]
    assert all(flood) and not evicted
    assert _take(admission, "198.51.100.5", evicted) is not None  # room made: 4 -> 3
    assert _take(admission, "198.51.100.5", evicted) is not None  # 3 -> 2
    assert evicted == ["203.0.113.9"] * 2 and flood[0] is not None and flood[0].released
    assert _take(admission, "198.51.100.5", evicted) is None  # 2 and 2: refused
    assert admission.refused == {"evicted": 2, "half-open-max": 1}
    assert admission.half_open_peak["tcp"] == 4 and sum(admission.half_open.values()) == 4


def test_max_clients_in_all_and_per_address() -> None:
    admission = Admission(AdmissionLimits(max_clients=3, max_clients_per_address=2))
    a1, a2 = _take(admission, "192.0.2.1"), _take(admission, "192.0.2.1")
    assert a1 is not None and a2 is not None
    a1.authenticated()
    a2.authenticated()
    assert _take(admission, "192.0.2.1") is None  # per address, authenticated or not
    assert _take(admission, "192.0.2.2", protocol="udp") is not None
    assert _take(admission, "192.0.2.3") is None  # 3 in all
    assert admission.refused == {"max-clients-per-address": 1, "max-clients": 1}
    a1.release()
    a1.release()  # idempotent
    assert admission.clients == 2 and _take(admission, "192.0.2.3") is not None


def test_refusals_are_logged_at_most_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    admission = Admission(AdmissionLimits(half_open_per_address=1), clock=clock)
    with caplog.at_level(logging.WARNING, "sslvpn.runtime.admission"):
        for _ in range(101):
            _take(admission, "192.0.2.1")
        assert len(caplog.records) == 1
        assert "not authenticated (first from 192.0.2.1)" in caplog.text
        clock.now += LOG_INTERVAL
        _take(admission, "192.0.2.1")
    assert len(caplog.records) == 2
    assert "refused 100 more new OpenVPN client(s) in 10 s" in caplog.records[1].getMessage()
    assert admission.refused == {"half-open-per-address": 101}


def test_the_workers_of_a_node_add_up() -> None:
    """`sessions` on a node with `serve --workers` shows every worker's listeners as one."""
    one = ListenerStatus(clients=3, half_open={"udp": 1, "tcp": 2}, half_open_peak={"udp": 4},
                         refused={"max-clients": 2}, top_refused_sources={"192.0.2.1": 2},
                         limits={"max_clients": 10})
    two = ListenerStatus(clients=1, half_open={"udp": 0, "tcp": 1}, half_open_peak={"udp": 1},
                         refused={"max-clients": 1, "rate-limited": 5},
                         top_refused_sources={"192.0.2.1": 1, "192.0.2.9": 5},
                         limits={"max_clients": 10})
    both = combined([one, two])
    assert (both.clients, both.half_open, both.half_open_peak) == (
        4, {"udp": 1, "tcp": 3}, {"udp": 5})
    assert both.refused == {"max-clients": 3, "rate-limited": 5}
    assert list(both.top_refused_sources.items()) == [("192.0.2.9", 5), ("192.0.2.1", 3)]
    assert both.limits == {"max_clients": 20}  # each worker holds its share


def test_an_ipv6_source_is_its_slash_64() -> None:
    """One host usually holds a whole /64: counting single IPv6 addresses would hand an
    attacker a budget per address."""
    assert source_of("198.51.100.7") == "198.51.100.7"
    assert source_of("2001:db8:1:2::5") == source_of("2001:db8:1:2:ffff::1") == \
        "2001:db8:1:2::/64"
    assert source_of("fe80::1%eth0") == "fe80::/64"
    admission = Admission(AdmissionLimits(half_open_per_address=2))
    taken = [_take(admission, source_of(f"2001:db8:1:2::{n}")) for n in range(1, 4)]
    assert [slot is not None for slot in taken] == [True, True, False]
