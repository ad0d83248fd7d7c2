"""An IPsec tunnel survives its node: nodes a and b of a fleet on one PostgreSQL (issue 10).

The fleet topology of tests/interop/fleet.py (prefix ``fi``) with a customer site running
charon (tests/interop/fleet_ipsec.py). With only node a running, a takes the tunnel's lease,
initiates and runs the gateway's ``--on-activate`` hook, which points the VPC's route to the
customer's LAN at a. Node b, started again, stands by. SIGKILL a: b takes the lease, runs the
hook (the VPC route now via b), initiates, charon replaces the old SA, and the hosts behind
both sides ping again. The time from the kill until both pings pass is the takeover time.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.fleet import FleetLab, build_fleet
from tests.interop.fleet_ipsec import standby_pair
from tests.ipsec.strongswan_lab import CHARON, LAN_A, SWANCTL
from tests.netns import wait_until
from tests.pgcluster import PostgresCluster

pytestmark = pytest.mark.interop

TAKEOVER_LIMIT = 30.0  # seconds from SIGKILL until both sides ping again


@pytest.fixture
def fleet(postgres: PostgresCluster, tmp_path: Path) -> Iterator[FleetLab]:
    for binary in (CHARON, Path(SWANCTL)):
        if not binary.exists():
            pytest.fail(f"{binary} is missing: run scripts/install-test-deps")
    with build_fleet(tmp_path / "fleet", postgres, prefix="fi") as lab:
        yield lab


def test_a_standby_node_takes_the_tunnel_when_its_owner_is_killed(
    fleet: FleetLab, tmp_path: Path
) -> None:
    a, b = fleet.nodes["a"], fleet.nodes["b"]
    pair = standby_pair(fleet, tmp_path)

    a.kill()
    killed = time.monotonic()
    assert wait_until(pair.pings, TAKEOVER_LIMIT, 0.1), \
        b.log.read_text()[-3000:] + pair.charon.tail()
    takeover = time.monotonic() - killed
    sys.stderr.write(f"\n[ipsec-failover] {takeover:.2f} s from SIGKILL of node a until the "
                     "hosts behind both sides ping again\n")

    assert wait_until(lambda: pair.up_on("b"), 10, 0.2), b.log.read_text()[-3000:]
    assert f"via {b.vpc_address}" in fleet.vpc.run("ip", "route", "show", LAN_A)  # b's hook
    sas = pair.charon.list_sas()
    assert b.public_address in sas and "ESTABLISHED" in sas, sas
    assert "node b took the lease of tunnel t1" in b.log.read_text()
    pair.charon.stop()
