"""`sslvpn user add/list/disable/enable` commands."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
