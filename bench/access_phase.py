"""Access rules on the data path: ours with 1,000 rules in force against ours with none
(issue 13's target: >= 0.95). The "baseline" column of these rows is ours without rules.

On a shared 2-core machine iperf3's throughput swings by a third between runs of the same
server, more than the effect measured. So the runs come in pairs, none and 1,000 rules back
to back (the order alternating), and the figure is the median of the pairs' ratios, with
their spread in the notes: a slow minute then costs both sides of a pair, not one. The phase
also gives the server's CPU per Gbit for both, and the check's own cost per packet, in
place: CPU ns of the gateway's own per-packet calls (client -> VPC and VPC -> client, on a
memory TUN) with the bench user's compiled set against none, and a flow's first lookup.

The bench user is put into a group holding 998 rules spread over the VPC's hosts and ports
(allow and deny, priorities mixed) plus the two that let iperf3 (tcp 5201) and ping reach
the VPC host, with the default "nothing", so every packet is checked; "none" is the default
"all-vpc" with the user in no group, today's path. The rules are stored once; a run switches
the membership and the default, and each run's server reads them as it starts.
"""

from __future__ import annotations

import ipaddress
import statistics
import struct
import time
from collections.abc import Callable
from pathlib import Path

from bench.report import Report
from bench.tunnel_phases import TunnelBench
from bench.vpn import USER, VPC_HOST, ServerDied, Unavailable, tunnel
from sslvpn.config import database_url
from sslvpn.net.access import TCP, CompiledRules
from sslvpn.runtime.gateway import ClientSession, Gateway, GatewayOptions
from sslvpn.runtime.tun import MemoryTun
from sslvpn.store import access_queries, db
from sslvpn.store.access_queries import Actor

RULES = 1000
MODES = ("1x up", "1x down")
BY = Actor("bench")
GROUP = "bench"
MSS_BITS = 1448 * 8  # TCP payload per packet in the tunnel (MTU 1500, timestamps)
STEPS = ("client -> VPC", "VPC -> client")
PAIRS_PER_REP = 3  # pairs of runs (none, rules) per repetition of the other phases: 9 full, 3 quick


def store_rules(data_dir: Path) -> None:
    """The bench group and its ``RULES`` rules (the user not yet in it), in the store."""
    engine = db.open_engine(database_url(data_dir, None))
    try:
        with db.session(engine, write=True) as s:
            if any(group.name == GROUP for group in access_queries.list_groups(s)):
                access_queries.delete_group(s, name=GROUP, by=BY)
            access_queries.add_group(s, name=GROUP, by=BY)
            for i in range(RULES - 2):
                access_queries.add_rule(s, group=GROUP, destination=f"10.10.0.{i % 250}/32",
                                        protocol="tcp" if i % 2 else "udp",
                                        ports=str(1000 + i), allow=i % 3 != 0,
                                        priority=10 + i % 50, by=BY)
            access_queries.add_rule(s, group=GROUP, destination=f"{VPC_HOST}/32",
                                    protocol="tcp", ports="5201", by=BY)
            access_queries.add_rule(s, group=GROUP, destination=f"{VPC_HOST}/32",
                                    protocol="icmp", by=BY)
    finally:
        engine.dispose()


def use_rules(data_dir: Path, on: bool | None) -> None:
    """The bench user in the group with the default "nothing" (on), or in no group with the
    default "all-vpc" (off); None also deletes the group (the bench's data as it found it)."""
    engine = db.open_engine(database_url(data_dir, None))
    try:
        with db.session(engine, write=True) as s:
            if on:
                access_queries.change_groups(s, user=USER, add=[GROUP], by=BY)
            elif GROUP in access_queries.change_groups(s, user=USER, by=BY):
                access_queries.change_groups(s, user=USER, remove=[GROUP], by=BY)
            access_queries.set_default(s, default="nothing" if on else "all-vpc", by=BY)
            if on is None:
                access_queries.delete_group(s, name=GROUP, by=BY)
    finally:
        engine.dispose()


def run_access(bench: TunnelBench, report: Report) -> None:
    """Pairs of UDP-tunnel runs without and with the rules; each mode's ratio per pair."""
    server = bench.servers["ours"]
    data_dir = bench.topo.data_dir
    bench._restart_iperf_server()
    store_rules(data_dir)
    ratios: dict[tuple[str, str], list[float]] = {
        (figure, mode): [] for figure in ("Mbit/s", "core-s/Gbit") for mode in MODES}
    try:
        for pair in range(PAIRS_PER_REP * bench.settings.reps):
            found: dict[tuple[str, int, str], float] = {}  # (figure, rules, mode)
            for count in ((0, RULES) if pair % 2 == 0 else (RULES, 0)):
                use_rules(data_dir, bool(count))
                try:
                    with tunnel(bench.topo, server, "udp"):
                        for mode in MODES:
                            result = bench._iperf("ours", "udp", mode, server)
                            if result is not None:
                                found["Mbit/s", count, mode] = result.mbps
                                if result.core_s_per_gbit is not None:
                                    found["core-s/Gbit", count, mode] = result.core_s_per_gbit
                                _record(report, mode, count, result.mbps,
                                        result.core_s_per_gbit)
                except (ServerDied, Unavailable) as exc:
                    report.notes.append(f"access rules ({count}) pair {pair + 1}: {exc}")
            for (figure, mode), pairs in ratios.items():
                if found.get((figure, 0, mode)) and (figure, RULES, mode) in found:
                    pairs.append(found[figure, RULES, mode] / found[figure, 0, mode])
        compiled = load_compiled(data_dir)
    finally:
        use_rules(data_dir, None)
    bench._finish_throughput()
    for (figure, mode), pairs in ratios.items():
        _ratio(report, figure, mode, pairs)
    costs = check_cost(compiled)
    for label, (with_rules, without) in costs.items():
        fig = report.get("access rules", f"check per packet, {RULES} rules vs none, {label}",
                         "ns", "lower")
        fig.ours, fig.baseline = with_rules, without
    _expected(report, costs)


def _expected(report: Report, costs: dict[str, tuple[float, float | None]]) -> None:
    """The ratio the check's cost allows: a server that is CPU-bound loses the share of its
    CPU per packet that the rules add. Per data packet it is charged one check each way
    (its own and an ACK's: more than TCP's one ACK per two segments), against the server's
    CPU per packet without rules (core-s/Gbit of the runs, MSS_BITS per packet)."""
    added = sum(max(with_rules - (without or 0.0), 0.0)
                for label, (with_rules, without) in costs.items() if label in STEPS)
    for mode in MODES:
        cpu = report.get("access rules", f"cpu per Gbit udp {mode}, {RULES} rules vs none",
                         "core-s/Gbit", "lower").baseline
        if cpu is None:
            continue
        per_packet = cpu * MSS_BITS  # ns: core-s per 1e9 bits times bits per packet
        report.get("access rules", f"udp {mode}, {RULES} rules / none, from the check's cost",
                   "ratio", "higher").ours = per_packet / (per_packet + added)
        report.notes.append(
            f"access rules udp {mode}: the server's CPU per packet without rules "
            f"{per_packet / 1000:.1f} us, the rules add {added:.0f} ns (both directions' "
            f"check), so a CPU-bound server keeps {per_packet / (per_packet + added):.3f}")


def _record(report: Report, mode: str, count: int, mbps: float,
            core_s_per_gbit: float | None) -> None:
    side = "ours" if count else "baseline"
    fig = report.get("access rules", f"udp {mode}, {RULES} rules vs none", "Mbit/s", "higher")
    fig.samples.setdefault(side, []).append(mbps)
    if core_s_per_gbit is not None:
        cpu = report.get("access rules", f"cpu per Gbit udp {mode}, {RULES} rules vs none",
                         "core-s/Gbit", "lower")
        cpu.samples.setdefault(side, []).append(core_s_per_gbit)


def _ratio(report: Report, figure: str, mode: str, ratios: list[float]) -> None:
    """The median of the pairs' ratios (its row's "ours"), the spread in the notes."""
    name = f"udp {mode}" if figure == "Mbit/s" else f"cpu per Gbit udp {mode}"
    fig = report.get("access rules", f"{name}, {RULES} rules / none, median of pairs",
                     "ratio", "higher" if figure == "Mbit/s" else "lower")
    fig.samples["ours"] = ratios
    if not ratios:
        return
    fig.ours = statistics.median(ratios)
    quartiles = (statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1
                 else [ratios[0]] * 3)
    report.notes.append(
        f"access rules {name} ({figure}): {RULES} rules / none in {len(ratios)} pairs: median "
        f"{fig.ours:.3f}, quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f}, range "
        f"{min(ratios):.3f}-{max(ratios):.3f} ({', '.join(f'{r:.3f}' for r in ratios)})")


def load_compiled(data_dir: Path) -> CompiledRules:
    """The bench user's compiled set, as the server loads it (rules on)."""
    use_rules(data_dir, True)
    engine = db.open_engine(database_url(data_dir, None))
    try:
        with db.session(engine, write=False) as s:
            compiled = access_queries.load_policy(s).compiled_for(USER)
    finally:
        engine.dispose()
    assert compiled is not None  # noqa: S101 (RULES rules were just stored)
    return compiled


class _Driver:
    """What the gateway's per-packet path asks of a session's driver, doing nothing."""

    now = 0.0

    def send_packet(self, packet: bytes) -> None:
        del packet


def check_cost(compiled: CompiledRules, packets: int = 50_000, rounds: int = 9,
               ) -> dict[str, tuple[float, float | None]]:
    """CPU ns per packet (with the rules, without), each the median of ``rounds`` rounds
    taken in turns: the gateway's client sink and TUN reader on a memory TUN for 64 flows
    (every packet after a flow's first, which the cache answers), and ``decide`` (the lookup
    a flow's first packet takes, with the rules only)."""
    gateway = Gateway(MemoryTun(), GatewayOptions(
        pool=ipaddress.IPv4Network("10.8.0.0/18"),
        vpc_networks=(ipaddress.IPv4Network("10.10.0.0/24"),)), policy=None)  # type: ignore[arg-type]
    client = ClientSession("bench", "udp", "198.18.0.2:1194", 0, lambda: None)
    client.driver = _Driver()  # type: ignore[assignment]
    client.vpn_address = bytes((10, 8, 0, 2))
    gateway._by_address[client.vpn_address] = client  # the TUN reader's registry
    host = ipaddress.ip_address(VPC_HOST).packed
    header = "!BBHHHBBH4s4sHH"
    up = [struct.pack(header, 0x45, 0, 1400, 1, 0x4000, 64, TCP, 0, client.vpn_address, host,
                      40000 + i, 5201) + bytes(1376) for i in range(64)]
    down = [struct.pack(header, 0x45, 0, 1400, 1, 0x4000, 64, TCP, 0, host, client.vpn_address,
                        5201, 40000 + i) + bytes(1376) for i in range(64)]
    sink = gateway._client_sink(client)  # the closure the driver calls per packet
    written = gateway.tun.written  # type: ignore[attr-defined]

    def per_packet(step: Callable[[bytes], None], flows: list[bytes]) -> float:
        started = time.process_time()
        for i in range(packets):
            step(flows[i & 63])
        spent = time.process_time() - started
        written.clear()
        return spent / packets * 1e9

    steps: dict[str, tuple[Callable[[bytes], None], list[bytes]]] = dict(
        zip(STEPS, ((sink, up), (gateway._from_tun, down)), strict=True))
    found: dict[str, tuple[list[float], list[float]]] = {label: ([], []) for label in steps}
    for _ in range(rounds):
        for rules in (compiled, None):
            client.access = rules
            for label, (step, flows) in steps.items():
                found[label][rules is None].append(per_packet(step, flows))
    costs = {label: (statistics.median(a), statistics.median(b))
             for label, (a, b) in found.items()}
    address = ipaddress.ip_address(VPC_HOST)
    started = time.process_time()
    for i in range(packets):
        compiled.decide(TCP, address, 5201 + (i & 63))
    costs["a flow's first lookup"] = ((time.process_time() - started) / packets * 1e9, None)
    return costs
