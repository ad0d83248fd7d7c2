"""IPsec: one TCP stream lanA -> lanB through strongSwan facing ours, and facing strongSwan.

    [lana] 10.1.0.10 -- 10.1.0.1 [sitea: charon] 198.18.0.1 == 198.18.0.2 [siteb: peer]
                                                    10.2.0.1 -- 10.2.0.10 [lanb: iperf3 -s]

siteA always runs strongSwan 5.9 (charon, kernel-libipsec: userspace ESP in UDP 4500) and
initiates. siteB runs either a second charon (the baseline) or `sslvpn serve` with a tunnel
made by the real `sslvpn ipsec` CLI (ours). Both use AES-256-GCM ESP and PSK authentication.
Each charon gets a private strongswan.conf and its own /run bind-mounted inside the
namespace (its pid file path is compiled in). CPU per Gbit is charged to the siteB peer.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench import measure
from bench.lab import Lab, Namespace, wait_until
from bench.report import Report

CHARON = "/usr/lib/ipsec/charon"
SWANCTL = "swanctl"
SSLVPN = str(Path(sys.executable).with_name("sslvpn"))
PSK = "sb-bench-psk-5Qm1-0123456789abcdef"  # noqa: S105 - a lab-only key
WAN = {"a": "198.18.0.1", "b": "198.18.0.2"}
LAN = {"a": "10.1.0.0/24", "b": "10.2.0.0/24"}
IKE, ESP = "aes256gcm16-prfsha256-ecp256", "aes256gcm16"
HOST_B = "10.2.0.10"
PLUGINS = ("random nonce openssl aes sha1 sha2 hmac gcm curve25519 gmp kdf pem pkcs1 x509 "
           "pubkey kernel-libipsec kernel-netlink socket-default vici")


@dataclass(frozen=True)
class IpsecSettings:
    reps: int
    seconds: float


class Charon:
    """One charon in ``ns`` for site ``me`` ("a" or "b") with its own conf, /run and vici."""

    def __init__(self, ns: Namespace, work: Path, me: str) -> None:
        self.ns, self.me = ns, me
        self.dir = work / f"charon-{me}"
        self.vici = self.dir / "charon.vici"
        self.conf = self.dir / "strongswan.conf"
        self.proc: subprocess.Popen[bytes] | None = None

    def _render(self) -> None:
        (self.dir / "run").mkdir(parents=True, exist_ok=True)
        peer = "b" if self.me == "a" else "a"
        self.conf.write_text(
            f"charon {{\n  load = {PLUGINS}\n  install_routes = yes\n"
            f"  install_virtual_ip = no\n  send_vendor_id = no\n"
            f"  plugins {{\n    vici {{\n      socket = unix://{self.vici}\n    }}\n  }}\n"
            f"  filelog {{\n    main {{\n      path = {self.dir / 'charon.log'}\n"
            f"      default = 1\n    }}\n  }}\n  syslog {{\n  }}\n}}\n")
        swanctl = self.dir / "swanctl.conf"
        swanctl.write_text(
            f"connections {{\n  site {{\n    version = 2\n    local_addrs = {WAN[self.me]}\n"
            f"    remote_addrs = {WAN[peer]}\n    encap = yes\n    mobike = no\n"
            f"    proposals = {IKE}\n"
            f"    local {{\n      auth = psk\n      id = {WAN[self.me]}\n    }}\n"
            f"    remote {{\n      auth = psk\n      id = {WAN[peer]}\n    }}\n"
            f"    children {{\n      net {{\n        mode = tunnel\n"
            f"        local_ts = {LAN[self.me]}\n        remote_ts = {LAN[peer]}\n"
            f"        esp_proposals = {ESP}\n        start_action = none\n      }}\n    }}\n"
            f"  }}\n}}\nsecrets {{\n  ike-site {{\n    id-a = {WAN['a']}\n"
            f"    id-b = {WAN['b']}\n    secret = \"{PSK}\"\n  }}\n}}\n")
        os.chmod(swanctl, 0o600)

    def start(self) -> None:
        self._render()
        self.vici.unlink(missing_ok=True)
        script = f"mount --bind '{self.dir / 'run'}' /run && exec '{CHARON}'"
        self.proc = self.ns.spawn(["env", f"STRONGSWAN_CONF={self.conf}", "sh", "-c", script],
                                  log=self.dir / "charon.stdout")
        proc = self.proc
        if not wait_until(lambda: self.vici.is_socket() or proc.poll() is not None, 15) \
                or proc.poll() is not None:
            raise RuntimeError(f"charon in site{self.me} did not start")
        self.swanctl("--load-all", "--file", str(self.dir / "swanctl.conf"))

    def swanctl(self, *args: str, timeout: float = 30) -> str:
        result = subprocess.run([SWANCTL, *args, "--uri", f"unix://{self.vici}"],
                                env={**os.environ, "STRONGSWAN_CONF": str(self.conf)},
                                capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"swanctl {' '.join(args)}: {result.stdout[-300:]}"
                               f"{result.stderr[-300:]}")
        return result.stdout

    def stop(self) -> None:
        if self.proc is not None:
            self.ns.lab.stop(self.proc)
            self.proc = None


def _topology(lab: Lab) -> dict[str, Namespace]:
    ns = {role: lab.namespace(role) for role in ("lana", "sitea", "siteb", "lanb")}
    lab.link(ns["sitea"], f"{WAN['a']}/24", ns["siteb"], f"{WAN['b']}/24")
    lab.link(ns["lana"], "10.1.0.10/24", ns["sitea"], "10.1.0.1/24")
    lab.link(ns["siteb"], "10.2.0.1/24", ns["lanb"], f"{HOST_B}/24")
    ns["lana"].run("ip", "route", "add", "default", "via", "10.1.0.1")
    ns["lanb"].run("ip", "route", "add", "default", "via", "10.2.0.1")
    for site in (ns["sitea"], ns["siteb"]):
        site.run("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                 "net.ipv4.conf.default.rp_filter=0")
    return ns


def _sslvpn(data_dir: Path, *args: str, stdin: str | None = None) -> None:
    result = subprocess.run([SSLVPN, "--data-dir", str(data_dir), *args], input=stdin,
                            capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"sslvpn {' '.join(args)}: "
                           f"{(result.stderr or result.stdout).strip()[-300:]}")


def _our_peer(ns: Namespace, work: Path) -> subprocess.Popen[bytes]:
    """`sslvpn serve` in siteB with one tunnel to siteA made through the CLI; waits for IKE."""
    data = work / "ours-data"
    _sslvpn(data, "init", "--public-address", WAN["b"], "--proto", "udp", "--vpc", LAN["b"])
    _sslvpn(data, "ipsec", "gateway", "add", "vgw", "--public-address", WAN["b"])
    _sslvpn(data, "ipsec", "customer-gateway", "add", "dc1", "--address", WAN["a"])
    _sslvpn(data, "ipsec", "tunnel", "add", "t1", "--gateway", "vgw", "--customer-gateway",
            "dc1", "--psk-stdin", "--ike", IKE, "--esp", ESP, "--wait", stdin=PSK + "\n")
    _sslvpn(data, "ipsec", "policy", "add", "t1", "--local", LAN["b"], "--peer", LAN["a"])
    log = work / "ours-serve.log"
    proc = ns.spawn([SSLVPN, "--data-dir", str(data), "serve", "--listen", WAN["b"],
                     "--proto", "udp", "--workers", "1"], log=log)
    if not wait_until(lambda: ":500" in ns.run("ss", "-uln", check=False)
                      or proc.poll() is not None, 10) or proc.poll() is not None:
        raise RuntimeError(f"sslvpn serve runs no IKE listener on {WAN['b']}:500 after 10 s")
    return proc


def run_ipsec(lab: Lab, work: Path, report: Report, settings: IpsecSettings) -> None:
    """Baseline (strongSwan in siteB) then ours (sslvpn in siteB), same initiator in siteA."""
    work.mkdir(parents=True, exist_ok=True)
    ns = _topology(lab)
    ns["lanb"].spawn(["iperf3", "-s", "-B", HOST_B], log=work / "iperf3.log")
    initiator = Charon(ns["sitea"], work, "a")
    initiator.start()
    tput = report.get("ipsec", "1 TCP stream lanA -> lanB", "Mbit/s", "higher")
    cpu = report.get("cpu per Gbit", "ipsec siteB peer, 1 stream", "core-s/Gbit", "lower")
    for side in ("baseline", "ours"):
        peer: subprocess.Popen[bytes] | None = None
        responder = Charon(ns["siteb"], work, "b")
        try:
            if side == "baseline":
                responder.start()
                peer = responder.proc
            else:
                peer = _our_peer(ns["siteb"], work)
            initiator.swanctl("--initiate", "--child", "net", timeout=30)
            for _ in range(settings.reps):
                result = measure.iperf(ns["lana"], HOST_B, "1x up", settings.seconds,
                                       peer.pid if peer else None)
                tput.samples.setdefault(side, []).append(result.mbps)
                if result.core_s_per_gbit is not None:
                    cpu.samples.setdefault(side, []).append(result.core_s_per_gbit)
        except Exception as exc:  # noqa: BLE001 - one side failing leaves the other's figures
            who = "strongSwan" if side == "baseline" else "ours"
            report.notes.append(f"ipsec {who}: n/a ({type(exc).__name__}: {exc})"[:400])
        finally:
            if side == "ours" and peer is not None:
                lab.stop(peer)
            responder.stop()
            _terminate_quietly(initiator)
        setattr(tput, side, measure.median(tput.samples.get(side, [])))
        setattr(cpu, side, measure.median(cpu.samples.get(side, [])))
    initiator.stop()


def _terminate_quietly(initiator: Charon) -> None:
    """Drop siteA's SAs between the two sides so the next peer starts from scratch."""
    try:
        initiator.swanctl("--terminate", "--ike", "site", "--force", timeout=10)
    except (RuntimeError, subprocess.TimeoutExpired):
        pass
