"""The ``sslvpn`` command: global options, then one sub-command module per owner."""

from __future__ import annotations

import importlib
from pathlib import Path

import click

from sslvpn.cli.context import CliContext

#: Each command's module (one owner per module, exporting its commands as COMMANDS), loaded
#: when the command runs: a `serve --workers` worker, which runs this command line again,
#: then loads `serve` alone rather than the portal, PKI and backup along with it.
COMMAND_MODULES = {
    "init": "setup", "user": "users", "cert": "certificates", "crl": "certificates",
    "profile": "certificates", "backup": "backup", "restore": "backup", "serve": "serve",
    "sessions": "sessions", "kick": "sessions", "check": "check", "portal": "portal",
    "node": "nodes", "ipsec": "ipsec", "service": "service", "alarm": "alarms",
    "group": "access", "rule": "access", "policy": "access",
}


class _LazyCommands(click.Group):
    """The sub-commands of `COMMAND_MODULES`, each imported when first asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if module is None:
            return None
        commands: list[click.Command] = importlib.import_module(f"sslvpn.cli.{module}").COMMANDS
        return next(command for command in commands if command.name == cmd_name)


@click.group(cls=_LazyCommands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SSLVPN_DATA_DIR",
    default=Path("var"),
    show_default=True,
    help="Folder holding the PKI, keys and the embedded SQLite database.",
)
@click.option(
    "--database-url",
    envvar="SSLVPN_DATABASE_URL",
    default=None,
    help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db (default: SQLite in data dir).",
)
@click.pass_context
def main(ctx: click.Context, data_dir: Path, database_url: str | None) -> None:
    """sslvpn: OpenVPN-compatible SSL VPN gateway, client profiles, portal and IPsec."""
    ctx.obj = CliContext(data_dir=data_dir, database_url=database_url)

