"""`sslvpn serve, sessions and kick` commands."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
