"""A `serve --workers` worker runs the `sslvpn ... serve` command line again: it must load
the gateway's modules only, not the portal, aiohttp or the metrics that the supervisor runs
(a third of each worker's memory and of its start-up time), nor psycopg on SQLite (10 MiB,
0.9 s), and every command must still be found under its name."""

from __future__ import annotations

import importlib
import subprocess
import sys

import click

from sslvpn.cli import COMMAND_MODULES, main

# what the supervisor runs, and psycopg, which only a store on PostgreSQL loads when it runs
NOT_IN_A_WORKER = ("aiohttp", "web", "jinja2", "qrcode", "PIL", "sslvpn.cli.serve_node",
                   "psycopg")


def test_resolving_serve_loads_no_portal_module_nor_psycopg() -> None:
    probe = ("import sys\nfrom sslvpn.cli import main\nmain.get_command(None, 'serve')\n"
             f"print(sorted(m for m in {NOT_IN_A_WORKER!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True, timeout=120)
    assert result.stdout.strip() == "[]"


def test_every_module_command_is_found_under_its_name() -> None:
    modules = {f"sslvpn.cli.{name}" for name in COMMAND_MODULES.values()}
    exported = {command.name: module for module in modules
                for command in importlib.import_module(module).COMMANDS}
    assert exported == {name: f"sslvpn.cli.{module}" for name, module in COMMAND_MODULES.items()}
    context = click.Context(main)
    for name in main.list_commands(context):
        command = main.get_command(context, name)
        assert command is not None and command.name == name
    assert main.get_command(context, "no-such-command") is None
