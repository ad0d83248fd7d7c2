"""A strongSwan 5.9 peer (charon + kernel-libipsec) in a network namespace, for interop tests.

Topology (every interface inside namespaces this module creates, prefix ``si``)::

    [lana] 10.1.0.10 -- 10.1.0.1 [sitea: charon] 198.18.0.1 == 198.18.0.2 [siteb: sslvpn]
                                                   10.2.0.1 -- 10.2.0.10 [lanb]

charon runs with a private, self-contained strongswan.conf (``STRONGSWAN_CONF``) and its own
``/run`` bind-mounted inside the namespace's private mount namespace, because its pid file path
is compiled in; swanctl talks to it from the host over its own vici socket. Everything is
stopped by pid and the namespaces removed in ``close()``, which fixtures call in finalizers.
Missing binaries raise (tests must fail, never skip, when a peer is missing).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.netns import Namespace, NetnsLab, wait_until

CHARON = Path("/usr/lib/ipsec/charon")
SWANCTL = "/usr/sbin/swanctl"
PSK = "si-lab-psk-7Kq2-0123456789abcdef"
WAN_A, WAN_B = "198.18.0.1", "198.18.0.2"
LAN_A, LAN_B = "10.1.0.0/24", "10.2.0.0/24"
HOST_A, HOST_B = "10.1.0.10", "10.2.0.10"
GW_A, GW_B = "10.1.0.1", "10.2.0.1"
# kernel-libipsec before kernel-netlink: userspace ESP through a TUN (ipsec0)
PLUGINS = (
    "random nonce openssl aes sha1 sha2 hmac gcm curve25519 gmp kdf pem pkcs1 x509 pubkey "
    "kernel-libipsec kernel-netlink socket-default vici"
)


@dataclass
class CharonConfig:
    ike_proposals: str = "aes256gcm16-prfsha256-ecp256"
    esp_proposals: str = "aes256gcm16"
    psk: str = PSK
    start_action: str = "none"
    dpd_delay: str = "5s"
    rekey_time: str = "4h"
    child_rekey_time: str = "1h"
    extra_log: dict[str, int] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)  # more charon.* settings
    local_addr: str = WAN_A  # charon's address and IKE identity
    remote_addrs: str = WAN_B  # a fleet lists every node that may carry the tunnel
    remote_id: str = WAN_B  # the VPN gateway's IKE identity
    remote_ts: str = LAN_B
    unique: str = "no"  # "replace": a new IKE SA from the same identity replaces the old
    swanctl_conf: str | None = None  # a whole swanctl.conf (e.g. one sslvpn rendered) instead


class Topology:
    """The four namespaces and their links; ``close`` removes everything."""

    def __init__(self, workdir: Path, prefix: str = "si") -> None:
        for binary in (CHARON, Path(SWANCTL)):
            if not binary.exists():
                raise RuntimeError(f"{binary} is missing: run scripts/install-test-deps")
        self.workdir = workdir
        self.lab = NetnsLab(prefix)
        try:
            self._build()
        except BaseException:
            self.lab.close()
            raise
        self.charon: Charon | None = None

    def _build(self) -> None:
        lab = self.lab
        self.lana, self.sitea = lab.namespace("lana"), lab.namespace("sitea")
        self.siteb, self.lanb = lab.namespace("siteb"), lab.namespace("lanb")
        _, self.wan_b_dev = lab.link(self.sitea, f"{WAN_A}/24", self.siteb, f"{WAN_B}/24")
        lab.link(self.lana, f"{HOST_A}/24", self.sitea, f"{GW_A}/24")
        lab.link(self.siteb, f"{GW_B}/24", self.lanb, f"{HOST_B}/24")
        self.lana.run("ip", "route", "add", "default", "via", GW_A)
        self.lanb.run("ip", "route", "add", "default", "via", GW_B)
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0"):
            self.sitea.run("sysctl", "-qw", key)  # siteb: sslvpn switches forwarding on itself

    def start_charon(self, config: CharonConfig) -> Charon:
        self.stop_charon()
        self.charon = Charon(self.sitea, self.workdir / "charon", config)
        self.charon.start()
        return self.charon

    def stop_charon(self) -> None:
        if self.charon is not None:
            self.charon.stop()
            self.charon = None

    def close(self) -> None:
        self.stop_charon()
        self.lab.close()


class Charon:
    """One charon in ``ns`` with its own conf, /run, vici socket and log."""

    def __init__(self, ns: Namespace, directory: Path, config: CharonConfig) -> None:
        self.ns = ns
        self.dir = directory
        self.config = config
        self.run_dir = directory / "run"
        self.conf = directory / "strongswan.conf"
        self.swanctl_conf = directory / "swanctl.conf"
        self.vici = directory / "charon.vici"
        self.log = directory / "charon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def render(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        levels = {"ike": 1, "cfg": 1, "chd": 1, "knl": 1, "enc": 1, "net": 0, "esp": 1}
        levels.update(self.config.extra_log)
        log_lines = "\n".join(f"            {k} = {v}" for k, v in levels.items())
        options = "".join(f"    {k} = {v}\n" for k, v in self.config.options.items())
        self.conf.write_text(f"""charon {{
{options}    load = {PLUGINS}
    install_routes = yes
    install_virtual_ip = no
    retransmit_tries = 3
    retransmit_timeout = 2.0
    send_vendor_id = no
    plugins {{
        vici {{
            socket = unix://{self.vici}
        }}
    }}
    filelog {{
        main {{
            path = {self.log}
            append = yes
            flush_line = yes
            time_format = %H:%M:%S
            ike_name = yes
            default = 1
{log_lines}
        }}
    }}
    syslog {{
    }}
}}
""")
        c = self.config
        if c.swanctl_conf is not None:
            self.swanctl_conf.write_text(c.swanctl_conf)
            os.chmod(self.swanctl_conf, 0o600)
            return
        self.swanctl_conf.write_text(f"""connections {{
    site {{
        version = 2
        local_addrs = {c.local_addr}
        remote_addrs = {c.remote_addrs}
        unique = {c.unique}
        encap = yes
        mobike = no
        proposals = {c.ike_proposals}
        rekey_time = {c.rekey_time}
        dpd_delay = {c.dpd_delay}
        local {{
            auth = psk
            id = {c.local_addr}
        }}
        remote {{
            auth = psk
            id = {c.remote_id}
        }}
        children {{
            net {{
                mode = tunnel
                local_ts = {LAN_A}
                remote_ts = {c.remote_ts}
                esp_proposals = {c.esp_proposals}
                rekey_time = {c.child_rekey_time}
                start_action = {c.start_action}
                dpd_action = restart
                close_action = none
            }}
        }}
    }}
}}
secrets {{
    ike-site {{
        id-a = {c.local_addr}
        id-b = {c.remote_id}
        secret = "{c.psk}"
    }}
}}
""")
        os.chmod(self.swanctl_conf, 0o600)

    def start(self) -> None:
        self.render()
        self.vici.unlink(missing_ok=True)
        (self.run_dir / "charon.pid").unlink(missing_ok=True)
        script = f"mount --bind '{self.run_dir}' /run && exec '{CHARON}'"
        proc = self.proc = self.ns.spawn(
            ["env", f"STRONGSWAN_CONF={self.conf}", "sh", "-c", script],
            log=self.dir / "charon.stdout",
        )
        if not wait_until(lambda: self.vici.is_socket() or proc.poll() is not None, 15):
            raise RuntimeError("charon's vici socket did not appear")
        if proc.poll() is not None:
            raise RuntimeError(f"charon exited: {self.tail()}")
        self.swanctl("--load-all", "--file", str(self.swanctl_conf))

    def stop(self) -> None:
        if self.proc is not None:
            self.ns.lab.stop(self.proc)
            self.proc = None

    def swanctl(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        result = subprocess.run(
            [SWANCTL, *args, "--uri", f"unix://{self.vici}"],
            env={**os.environ, "STRONGSWAN_CONF": str(self.conf)},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"swanctl {' '.join(args)}: {result.stdout}{result.stderr}")
        return result.stdout + result.stderr

    def list_sas(self) -> str:
        return self.swanctl("--list-sas", check=False)

    def established(self) -> bool:
        out = self.list_sas()
        return "ESTABLISHED" in out and "INSTALLED" in out

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no charon log)"
