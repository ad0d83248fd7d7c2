"""`sslvpn service install`: the systemd unit that runs `sslvpn serve` as a real service.

``Type=notify``: `serve` says READY=1 once clients can connect and pings the watchdog from
the loop that carries packets (`sslvpn.runtime.systemd`), so a wedged gateway is restarted
(``Restart=on-failure``). It runs as root with only the capabilities it uses
(``CAP_NET_ADMIN`` for the TUN, routes and nft; ``CAP_NET_BIND_SERVICE`` for ports below
1024), cannot gain more, and sees the file system read-only except its data folder. The
database URL, which may hold a password, is never written into the unit (units are world
readable): put ``SSLVPN_DATABASE_URL=...`` in ``/etc/default/sslvpn`` (mode 0600), which
the unit reads when it exists.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click

from sslvpn.cli.setup import obj_of
from sslvpn.config import atomic_file

UNIT_FILE = Path("/etc/systemd/system/sslvpn.service")
ENVIRONMENT_FILE = Path("/etc/default/sslvpn")
WATCHDOG_SEC = 30
OPEN_FILES = 1048576  # one descriptor per TCP client (and floated UDP session), the store


def render_unit(*, executable: Path, data_dir: Path, serve_args: tuple[str, ...] = (),
                watchdog_sec: int = WATCHDOG_SEC) -> str:
    """The unit's text; ``data_dir`` absolute, ``serve_args`` appended to `serve`."""
    command = " ".join(_quoted(arg) for arg in (str(executable), "--data-dir", str(data_dir),
                                                 "serve", *serve_args))
    return f"""\
[Unit]
Description=sslvpn gateway (OpenVPN-compatible SSL VPN, portal, IPsec site-to-site)
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
# with serve --workers, the first worker says READY and pings the watchdog
NotifyAccess=all
EnvironmentFile=-{ENVIRONMENT_FILE}
ExecStart={command}
Restart=on-failure
RestartSec=2
WatchdogSec={watchdog_sec}
TimeoutStopSec=30
LimitNOFILE={OPEN_FILES}
CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={_quoted(str(data_dir))}
ProtectHome=yes
PrivateTmp=yes
DevicePolicy=closed
DeviceAllow=/dev/net/tun rw
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
RestrictRealtime=yes
LockPersonality=yes
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
"""


def _quoted(arg: str) -> str:
    """An ExecStart word: quoted when it holds a space or a quote (systemd.syntax)."""
    if not any(c in arg for c in " \t\"'\\"):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _executable() -> Path:
    beside = Path(sys.executable).with_name("sslvpn")  # this installation's own command
    found = beside if beside.exists() else shutil.which("sslvpn")
    if found is None:
        raise click.ClickException("cannot find the sslvpn command to run")
    return Path(found).absolute()


@click.group("service")
def service() -> None:
    """Run sslvpn under systemd."""


@service.command("install")
@click.option("--unit-file", type=click.Path(dir_okay=False, path_type=Path),
              default=UNIT_FILE, show_default=True, help="Where to write the unit.")
@click.option("--watchdog-sec", type=click.IntRange(2), default=WATCHDOG_SEC,
              show_default=True, help="Restart the gateway when its loop is stuck this long.")
@click.argument("serve_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def install(ctx: click.Context, unit_file: Path, watchdog_sec: int,
            serve_args: tuple[str, ...]) -> None:
    """Write the systemd unit running `serve` on this data folder; SERVE_ARGS (after --)
    go to `serve`, e.g. `sslvpn service install -- --metrics-listen 9100`."""
    data_dir = obj_of(ctx).data_dir.absolute()
    text = render_unit(executable=_executable(), data_dir=data_dir, serve_args=serve_args,
                       watchdog_sec=watchdog_sec)
    with atomic_file(unit_file, 0o644) as handle:
        handle.write(text.encode())
    click.echo(f"wrote {unit_file}")
    if obj_of(ctx).database_url is not None:
        click.echo(f"put SSLVPN_DATABASE_URL=... in {ENVIRONMENT_FILE} (mode 0600): the unit "
                   "does not hold it")
    click.echo(f"then: systemctl daemon-reload && systemctl enable --now {unit_file.stem}")


COMMANDS: list[click.Command] = [service]
