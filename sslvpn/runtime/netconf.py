"""Host network configuration the gateway owns while it runs, undone when it stops.

On start: the TUN device gets the pool's gateway address (which adds the connected route to
the client pool), comes up with its MTU, IP forwarding is switched on (the previous value is
remembered), and optionally an nftables table masquerades client traffic toward the VPC when
the VPC has no return route to the pool. On stop everything is put back. Commands are run
with ``ip``/``nft`` from iproute2 and nftables; failures raise ``NetconfError`` with the
command's own message.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

NFT_TABLE = "sslvpn"
FORWARD_SYSCTL = {4: Path("/proc/sys/net/ipv4/ip_forward"),
                  6: Path("/proc/sys/net/ipv6/conf/all/forwarding")}


class NetconfError(RuntimeError):
    """A network configuration command failed."""


def run(*args: str) -> str:
    """Run one configuration command; its stderr becomes the error message."""
    result = subprocess.run(args, capture_output=True, text=True, check=False)  # noqa: S603
    if result.returncode != 0:
        raise NetconfError(f"{' '.join(args)}: {result.stderr.strip() or result.returncode}")
    return result.stdout


@dataclass
class NetConfig:
    """The addresses, routes, forwarding and SNAT rules set up for one TUN device."""

    tun_name: str
    pool: ipaddress.IPv4Network
    gateway_address: ipaddress.IPv4Address
    vpc_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
    mtu: int = 1500
    pool6: ipaddress.IPv6Network | None = None
    gateway6_address: ipaddress.IPv6Address | None = None
    snat: bool = False
    nft_table: str = NFT_TABLE  # one per worker process: each masquerades its own slice
    _saved_forwarding: dict[int, str] = field(default_factory=dict)
    _snat_installed: bool = False

    def apply(self) -> None:
        """Address and bring up the TUN, enable forwarding, install SNAT when asked."""
        prefix = self.pool.prefixlen
        run("ip", "addr", "replace", f"{self.gateway_address}/{prefix}", "dev", self.tun_name)
        if self.pool6 is not None and self.gateway6_address is not None:
            run("ip", "-6", "addr", "replace",
                f"{self.gateway6_address}/{self.pool6.prefixlen}", "dev", self.tun_name)
        run("ip", "link", "set", "dev", self.tun_name, "mtu", str(self.mtu), "up")
        self._enable_forwarding(4)
        if self.pool6 is not None:
            self._enable_forwarding(6)
        if self.snat:
            self._install_snat()

    def remove(self) -> None:
        """Undo ``apply``; safe to call twice and after a partial ``apply``."""
        if self._snat_installed:
            with contextlib.suppress(NetconfError):
                run("nft", "delete", "table", "ip", self.nft_table)
            self._snat_installed = False
        for version, value in list(self._saved_forwarding.items()):
            with contextlib.suppress(OSError):
                FORWARD_SYSCTL[version].write_text(value)
            del self._saved_forwarding[version]
        with contextlib.suppress(NetconfError):
            run("ip", "link", "set", "dev", self.tun_name, "down")

    def _enable_forwarding(self, version: int) -> None:
        path = FORWARD_SYSCTL[version]
        previous = path.read_text().strip()
        if previous != "1":
            path.write_text("1")
            self._saved_forwarding[version] = previous

    def _install_snat(self) -> None:
        vpc4 = [str(n) for n in self.vpc_networks if n.version == 4]
        if not vpc4:
            return
        # one transaction: create the table if absent, empty it by deleting it, fill it, so a
        # table a killed gateway left behind is replaced, never given a second rule
        rules = (
            f"table ip {self.nft_table}\n"
            f"delete table ip {self.nft_table}\n"
            f"table ip {self.nft_table} {{\n"
            "  chain postrouting {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            f"    ip saddr {self.pool} ip daddr {{ {', '.join(vpc4)} }} masquerade\n"
            "  }\n"
            "}\n"
        )
        result = subprocess.run(  # noqa: S603
            ["nft", "-f", "-"], input=rules, capture_output=True, text=True, check=False  # noqa: S607
        )
        if result.returncode != 0:
            raise NetconfError(f"nft: {result.stderr.strip()}")
        self._snat_installed = True
        log.info("SNAT toward %s installed (table ip %s)", ", ".join(vpc4), self.nft_table)
