"""The ``sslvpn`` command: global options, then one sub-command module per owner."""

from __future__ import annotations

from pathlib import Path

import click

from sslvpn.cli.context import CliContext


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


def _register() -> None:
    """Each sub-command module has one owner and exports its click commands as COMMANDS."""
    from sslvpn.cli import (
        access,
        alarms,
        backup,
        certificates,
        check,
        ipsec,
        nodes,
        portal,
        serve,
        service,
        sessions,
        setup,
        users,
    )

    for module in (setup, users, certificates, backup, serve, sessions, check, portal, nodes,
                   ipsec, service, alarms, access):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
