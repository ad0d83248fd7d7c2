"""Fleet failover: 20 real clients on two nodes, one node SIGKILLed, time until they are back.

The two-node topology of tests/interop/fleet.py (prefix ``sbf``): every client in its own
namespace on one "internet" bridge with both nodes; the VPC routes each node's sub-pool
(10.8.0.0/26 via node a, 10.8.0.64/26 via node b) to that node and hosts the ping target.

* ours: two ``sslvpn serve --node a|b`` on one private PostgreSQL cluster
  (tests/pgcluster.py), profiles from ``sslvpn profile`` (both nodes, UDP and TCP,
  ``remote-random``, ``server-poll-timeout``).
* baseline: on the same namespaces and with the same profiles, stock OpenVPN 2.6 servers,
  one per node and transport, each with its own subnet inside the node's sub-pool (UDP the
  first /27, TCP the second) and the keepalive our nodes push (read from a client's log).

Every client pings the VPC host five times a second with time-stamped replies. Node a is
SIGKILLed; for each client that held an address of a's sub-pool, the failover time is from
the kill to its first reply after it. For ours, the store's open sessions are read during the
failover and any address held by two open sessions at once is counted. Last, the IPsec
takeover (tests/interop/fleet_ipsec.py): a tunnel up on node a with b standing by, a killed,
the time until the hosts behind both sides ping again.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.lab import file_contains, wait_until
from bench.report import Report
from bench.vpn import openvpn_server_lines
from tests.interop.fleet import CONNECTED, NODES, AddressWatch, FleetClient, FleetLab, build_fleet
from tests.interop.fleet_ipsec import standby_pair
from tests.pgcluster import postgres_cluster

PREFIX = "sbf"
GROUP = "fleet failover"
VICTIM = "a"
USER = "bench"
PUSHED = re.compile(r"PUSH_REPLY,.*?\bping (\d+),ping-restart (\d+)\b")
LINK = re.compile(r"\b(UDP|TCP)v[46](?:_CLIENT)? link remote:")


@dataclass(frozen=True)
class FleetSettings:
    clients: int
    back_timeout: float  # seconds to wait for every client of the killed node


@dataclass
class Failover:
    """What one side's kill showed: per-client times (None: not back) and doubled addresses."""

    times: list[float | None]
    transports: list[str | None]  # each client's transport when the node died
    doubled: int | None = None  # None where nobody can tell (the baseline keeps no store)

    def by_transport(self) -> dict[str, list[float | None]]:
        """The times of all clients, then of the UDP and of the TCP ones."""
        split: dict[str, list[float | None]] = {"all": list(self.times), "UDP": [], "TCP": []}
        for time_s, transport in zip(self.times, self.transports, strict=True):
            if transport is not None:
                split[transport].append(time_s)
        return split


def failover_times(killed_at: float, replies: Sequence[Sequence[float]]) -> list[float | None]:
    """Per client, seconds from the kill to its first ping reply after it (None: none came)."""
    return [min((t - killed_at for t in times if t > killed_at), default=None)
            for times in replies]


def summary(times: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Median and max over the clients that came back; max is None if any did not (the
    failover is not over until every client is back)."""
    back = [t for t in times if t is not None]
    if not back:
        return None, None
    return statistics.median(back), (max(back) if len(back) == len(times) else None)


def node_of(address: str | None, pools: dict[str, str]) -> str | None:
    """The node whose sub-pool holds ``address``."""
    if address is None:
        return None
    ip = ipaddress.ip_address(address)
    return next((node for node, pool in pools.items() if ip in ipaddress.ip_network(pool)),
                None)


def pushed_keepalive(log: str) -> tuple[int, int] | None:
    """The ``ping``/``ping-restart`` a server pushed, from an openvpn client's log."""
    match = PUSHED.search(log)
    return (int(match.group(1)), int(match.group(2))) if match else None


def transport_of(log: str) -> str | None:
    """The transport ("UDP"/"TCP") of an openvpn client's latest connection, from its log."""
    links = LINK.findall(log)
    return links[-1] if links else None


def run_fleet(work: Path, report: Report, settings: FleetSettings) -> None:
    """Ours, then the OpenVPN baseline, then the IPsec takeover, on one fleet topology."""
    try:
        with postgres_cluster() as postgres, \
                build_fleet(work / "fleet", postgres, prefix=PREFIX) as fleet:
            _run(fleet, work, report, settings)
    except pytest.fail.Exception as exc:  # the shared helpers fail the way tests do
        raise RuntimeError(str(exc)[-500:]) from None


def _run(fleet: FleetLab, work: Path, report: Report, settings: FleetSettings) -> None:
    clients = [fleet.start_client(USER, f"d{i}") for i in range(settings.clients)]
    _connect(clients)
    keepalive = pushed_keepalive(clients[0].text())
    if keepalive is None:
        raise RuntimeError(f"no keepalive pushed: {clients[0].text()[-600:]}")
    ours = _failover(fleet, clients, settings, fleet.nodes[VICTIM].kill, watch=True)
    fleet.nodes["b"].kill()
    servers = _openvpn_servers(fleet, work, keepalive)
    try:
        for client in clients:
            client.launch(client.log.with_name(f"{client.log.stem}-openvpn.log"))
        _connect(clients)
        baseline = _failover(fleet, clients, settings, lambda: _kill(servers[VICTIM]),
                             watch=False)
    finally:
        for client in clients:
            client.stop()
        for procs in servers.values():
            for proc in procs:
                fleet.lab.stop(proc)
    _record(report, ours, baseline, keepalive, settings)
    report.get("ipsec", "fleet takeover: node SIGKILL -> hosts ping again", "s",
               "lower").ours = _ipsec_takeover(fleet, work)


def _connect(clients: Sequence[FleetClient]) -> None:
    """Every client connected and its pinger answered (bounded waits)."""
    for client in clients:
        client.wait_connected(60)
    for client in clients:
        client.start_pinging()
    for client in clients:
        if not wait_until(lambda: bool(client.replies()), 15):  # noqa: B023 - waited here
            raise RuntimeError(f"client {client.serial} does not reach the VPC host")


def _failover(fleet: FleetLab, clients: Sequence[FleetClient], settings: FleetSettings,
              kill: Callable[[], float], *, watch: bool) -> Failover:
    """``kill`` what serves on the victim node and time the return of the victim's clients;
    ``watch``: read the store's open sessions meanwhile for doubled addresses."""
    pools = {name: pool for name, (_, _, pool) in NODES.items()}
    moved = [c for c in clients if node_of(c.address(), pools) == VICTIM]
    if not moved:
        raise RuntimeError(f"no client landed on node {VICTIM} (remote-random)")
    transports = [transport_of(c.text()) for c in moved]
    watcher = AddressWatch(fleet) if watch else None
    try:
        killed_at = kill()
        wait_until(lambda: all(any(t > killed_at for t in c.replies()) for c in moved),
                   settings.back_timeout)
    finally:
        if watcher is not None:
            watcher.stop()
    times = failover_times(killed_at, [c.replies() for c in moved])
    doubled = len({address for address, _ in watcher.doubled}) if watcher is not None else None
    return Failover(times, transports, doubled)


def _openvpn_servers(fleet: FleetLab, work: Path, keepalive: tuple[int, int]
                     ) -> dict[str, list[subprocess.Popen[bytes]]]:
    """Stock OpenVPN 2.6 servers per node, UDP on the first half of its sub-pool and TCP on
    the second, started in the nodes' namespaces (bounded wait for each)."""
    servers: dict[str, list[subprocess.Popen[bytes]]] = {}
    pki = fleet.data_dir / "pki"
    for name, node in fleet.nodes.items():
        node.ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        halves = ipaddress.IPv4Network(node.pool).subnets(prefixlen_diff=1)
        servers[name] = []
        for proto, subnet in zip(("udp", "tcp"), halves, strict=True):
            conf = work / f"openvpn-{name}-{proto}.conf"
            conf.write_text("\n".join(openvpn_server_lines(
                pki, node.public_address, proto, str(subnet.network_address),
                str(subnet.netmask), keepalive)) + "\n")
            log = work / f"openvpn-{name}-{proto}.log"
            proc = node.ns.spawn(["openvpn", "--config", str(conf)], log=log)
            servers[name].append(proc)
            up = file_contains(log, CONNECTED)
            if not wait_until(lambda: up() or proc.poll() is not None,  # noqa: B023
                              30) or proc.poll() is not None:
                raise RuntimeError(f"openvpn {name}/{proto} did not start: "
                                   f"{log.read_text(errors='replace')[-600:]}")
    return servers


def _kill(procs: Sequence[subprocess.Popen[bytes]]) -> float:
    """SIGKILL a node's servers at once; the time of the kill."""
    killed_at = time.time()
    for proc in procs:
        os.killpg(proc.pid, signal.SIGKILL)
    for proc in procs:
        proc.wait(10)
    return killed_at


def _record(report: Report, ours: Failover, baseline: Failover, keepalive: tuple[int, int],
            settings: FleetSettings) -> None:
    """Median and max per transport and over all clients of the killed node, per side."""
    for side, result in (("ours", ours), ("baseline", baseline)):
        for clients, times in result.by_transport().items():
            median, worst = summary(times)
            for name, value in (("median", median), ("max", worst)):
                figure = report.get(GROUP, f"failover {name}, {clients} clients of the killed "
                                    "node (SIGKILL -> VPC ping)", "s", "lower")
                setattr(figure, side, value)
                figure.samples[side] = [t for t in times if t is not None]
        back = sum(t is not None for t in result.times)
        setattr(report.get(GROUP, "clients of the killed node not back", "clients", "lower"),
                side, float(len(result.times) - back))
        report.notes.append(
            f"fleet {side}: {back} of {len(result.times)} clients of node {VICTIM} back within "
            f"{settings.back_timeout:.0f} s ({result.transports.count('UDP')} on UDP, "
            f"{result.transports.count('TCP')} on TCP)")
    report.get(GROUP, "addresses held by two open sessions", "addresses", "lower").ours = (
        None if ours.doubled is None else float(ours.doubled))
    report.notes.append(
        f"fleet: {settings.clients} openvpn 2.6 clients, profiles from `sslvpn profile` "
        f"(remote-random, both nodes, UDP+TCP); keepalive ping {keepalive[0]} s / "
        f"ping-restart {keepalive[1]} s on both sides; baseline: stock OpenVPN 2.6 servers "
        "per node and transport (no store: duplicate addresses n/a). The killed process's "
        "host stays up, so its kernel resets TCP clients at once; UDP clients wait for "
        "ping-restart (a vanished host would make TCP clients wait too)")


def _ipsec_takeover(fleet: FleetLab, work: Path) -> float | None:
    """Both nodes up again, the tunnel on a with b standing by; kill a, time the pings."""
    for node in fleet.nodes.values():
        node.start()
    pair = standby_pair(fleet, work / "ipsec")
    try:
        fleet.nodes["a"].kill()
        killed = time.monotonic()
        if not wait_until(pair.pings, 60, 0.1):
            return None
        return time.monotonic() - killed
    finally:
        pair.charon.stop()
