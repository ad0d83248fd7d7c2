"""Access rules on the data path: ours with 1,000 rules in force against ours with none
(issue 13's target: >= 0.95). The "baseline" column of these rows is ours without rules.

On a shared 2-core machine iperf3's throughput swings by a third between runs of the same
server, more than the effect measured, so the phase also gives the server's CPU per Gbit
for both, and the check's own cost per packet (CPU time in this process, the compiled set
of the same 1,000 rules): a flow cache hit, as every packet after a flow's first is, and a
full lookup, as a flow's first packet is.

The bench user is put into a group holding 998 rules spread over the VPC's hosts and ports
(allow and deny, priorities mixed) plus the two that let iperf3 (tcp 5201) and ping reach
the VPC host, with the default "nothing", so every packet is checked; "none" is the default
"all-vpc" with no rules, today's path. Runs alternate between the two on one topology.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from pathlib import Path

from bench.report import Report
from bench.tunnel_phases import TunnelBench
from bench.vpn import USER, VPC_HOST, ServerDied, Unavailable, tunnel
from sslvpn.config import database_url
from sslvpn.net.access import TCP
from sslvpn.store import access_queries, db
from sslvpn.store.access_queries import Actor

RULES = 1000
MODES = ("1x up", "1x down")
BY = Actor("bench")


def set_rules(data_dir: Path, count: int) -> None:
    """``count`` rules for the bench user (0: none and the default all-vpc), in the store."""
    engine = db.open_engine(database_url(data_dir, None))
    try:
        with db.session(engine, write=True) as s:
            if any(group.name == "bench" for group in access_queries.list_groups(s)):
                access_queries.delete_group(s, name="bench", by=BY)
            access_queries.set_default(s, default="nothing" if count else "all-vpc", by=BY)
            if not count:
                return
            access_queries.add_group(s, name="bench", by=BY)
            access_queries.change_groups(s, user=USER, add=["bench"], by=BY)
            for i in range(count - 2):
                access_queries.add_rule(s, group="bench", destination=f"10.10.0.{i % 250}/32",
                                        protocol="tcp" if i % 2 else "udp",
                                        ports=str(1000 + i), allow=i % 3 != 0,
                                        priority=10 + i % 50, by=BY)
            access_queries.add_rule(s, group="bench", destination=f"{VPC_HOST}/32",
                                    protocol="tcp", ports="5201", by=BY)
            access_queries.add_rule(s, group="bench", destination=f"{VPC_HOST}/32",
                                    protocol="icmp", by=BY)
    finally:
        engine.dispose()


def run_access(bench: TunnelBench, report: Report) -> None:
    """Interleaved UDP runs with and without the rules; medians into the report."""
    server = bench.servers["ours"]
    bench._restart_iperf_server()
    for rep in range(bench.settings.reps):
        for count in ((0, RULES) if rep % 2 == 0 else (RULES, 0)):
            set_rules(bench.topo.data_dir, count)
            try:
                with tunnel(bench.topo, server, "udp"):
                    for mode in MODES:
                        result = bench._iperf("ours", "udp", mode, server)
                        if result is None:
                            continue
                        side = "ours" if count else "baseline"
                        fig = report.get("access rules", f"udp {mode}, {RULES} rules vs none",
                                         "Mbit/s", "higher")
                        fig.samples.setdefault(side, []).append(result.mbps)
                        if result.core_s_per_gbit is not None:
                            cpu = report.get("access rules", f"cpu per Gbit udp {mode}, "
                                             f"{RULES} rules vs none", "core-s/Gbit", "lower")
                            cpu.samples.setdefault(side, []).append(result.core_s_per_gbit)
            except (ServerDied, Unavailable) as exc:
                report.notes.append(f"access rules ({count}) rep {rep + 1}: {exc}")
    set_rules(bench.topo.data_dir, 0)
    bench._finish_throughput()
    for label, rate in check_cost(bench.topo.data_dir).items():
        report.get("access rules", f"check per packet, {RULES} rules, {label}", "ns",
                   "lower").ours = rate


def check_cost(data_dir: Path, packets: int = 200_000) -> dict[str, float]:
    """CPU ns per packet of the bench user's compiled set: flow cache hits (64 flows), and
    the lookup a flow's first packet takes (``decide``, which the cache fills from)."""
    set_rules(data_dir, RULES)
    engine = db.open_engine(database_url(data_dir, None))
    try:
        with db.session(engine, write=False) as s:
            compiled = access_queries.load_policy(s).compiled_for(USER)
    finally:
        engine.dispose()
        set_rules(data_dir, 0)
    assert compiled is not None  # noqa: S101 (RULES rules were just stored)
    host = ipaddress.ip_address(VPC_HOST).packed
    flows = [struct.pack("!BBHHHBBH4s4sHH", 0x45, 0, 1400, 1, 0, 64, 6, 0,
                         bytes((10, 8, 0, 2)), host, 40000 + i, 5201) + bytes(1372)
             for i in range(64)]
    allowed = compiled.allowed
    started = time.process_time()
    for i in range(packets):
        allowed(flows[i & 63])
    hit = (time.process_time() - started) / packets * 1e9
    decide, address = compiled.decide, ipaddress.ip_address(VPC_HOST)
    started = time.process_time()
    for i in range(packets):
        decide(TCP, address, 5201 + (i & 63))
    miss = (time.process_time() - started) / packets * 1e9
    return {"flow cache hit": hit, "lookup (a flow's first packet)": miss}
