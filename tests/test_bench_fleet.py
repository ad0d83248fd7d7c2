"""The fleet phase's arithmetic: failover per client from its first reply after the kill, a
median over those back and no max while any client is missing, addresses mapped to their
node's sub-pool, the keepalive read from a client's PUSH_REPLY and the transport from its
latest link, the times split by transport."""

from __future__ import annotations

from bench.fleet_phase import (
    Failover,
    failover_times,
    node_of,
    pushed_keepalive,
    summary,
    transport_of,
)

POOLS = {"a": "10.8.0.0/26", "b": "10.8.0.64/26"}


def test_failover_is_the_first_reply_after_the_kill() -> None:
    replies = [[99.8, 100.0, 112.5, 112.7], [99.9, 121.0], [99.0]]
    assert failover_times(100.0, replies) == [12.5, 21.0, None]


def test_summary_has_no_max_until_every_client_is_back() -> None:
    assert summary([12.5, 21.0, 14.0]) == (14.0, 21.0)
    assert summary([12.5, 21.0, None]) == (16.75, None)
    assert summary([None, None]) == (None, None)
    assert summary([]) == (None, None)


def test_an_address_belongs_to_the_node_of_its_sub_pool() -> None:
    assert node_of("10.8.0.2", POOLS) == "a"
    assert node_of("10.8.0.63", POOLS) == "a"
    assert node_of("10.8.0.66", POOLS) == "b"
    assert node_of("10.8.0.130", POOLS) is None
    assert node_of(None, POOLS) is None


def test_the_pushed_keepalive_comes_from_the_push_reply() -> None:
    log = ("2026-12-07 18:00:00 PUSH: Received control message: 'PUSH_REPLY,route 10.10.0.0 "
           "255.255.255.0,topology subnet,ping 5,ping-restart 15,ifconfig 10.8.0.2 "
           "255.255.255.192,peer-id 0,cipher AES-256-GCM'\n")
    assert pushed_keepalive(log) == (5, 15)
    assert pushed_keepalive("no push here\n") is None


def test_the_transport_is_the_latest_link_in_the_log() -> None:
    log = ("TCPv4_CLIENT link remote: [AF_INET]198.18.0.1:1194\n"
           "Connection reset, restarting [0]\n"
           "UDPv4 link remote: [AF_INET]198.18.0.2:1194\n")
    assert transport_of(log) == "UDP"
    assert transport_of(log.splitlines()[0]) == "TCP"
    assert transport_of("Attempting to establish TCP connection\n") is None


def test_times_split_by_transport_keep_every_client_in_all() -> None:
    result = Failover([3.0, 21.0, None], ["TCP", "UDP", "UDP"])
    assert result.by_transport() == {"all": [3.0, 21.0, None], "UDP": [21.0, None],
                                     "TCP": [3.0]}
