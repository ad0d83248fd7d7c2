"""`sslvpn alarm list|set|test`: the alarm rules and channels, and what is raised now.

Settings are ``<rule>.<param>`` or ``<channel>.<param>`` keys (``sslvpn alarm list`` shows
them with their meaning); the running gateway reads them each round, so a change needs no
restart. Secrets (``webhook.secret``, ``smtp.password``) are read from stdin with ``-``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime

import click
from sqlalchemy import Engine

from client_profiles import crl
from sslvpn.cli.setup import ACTOR, one_line_errors, store
from sslvpn.config import DataPaths
from sslvpn.runtime.alarms import Deliverer, listed
from sslvpn.store import db, queries
from sslvpn.store.alarm_queries import (
    DEFAULTS,
    SECRET_KEYS,
    Observation,
    admin_emails,
    alarm_list,
    alarm_settings,
    channels,
    observe,
    set_alarm_setting,
)


@click.group("alarm")
def alarm_group() -> None:
    """Alarm rules, channels (webhook, e-mail) and the alarms raised."""


@alarm_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@one_line_errors
def list_command(ctx: click.Context, as_json: bool) -> None:
    """Show every setting (secrets hidden) and the alarms raised or recently cleared."""
    with store(ctx, write=False) as engine, db.session(engine, write=False) as s:
        settings = alarm_settings(s)
        alarms = alarm_list(s, limit=20)
    shown = {key: ("(set)" if value else "") if key in SECRET_KEYS else value
             for key, value in settings.items()}
    if as_json:
        click.echo(json.dumps({"settings": shown, "alarms": [
            {"alarm": row.key, "state": "cleared" if row.cleared_at else "raised",
             "message": row.message, "raised_at": row.raised_at.isoformat(),
             "cleared_at": row.cleared_at.isoformat() if row.cleared_at else None}
            for row in alarms]}, indent=2))
        return
    for key, value in shown.items():
        click.echo(f"{key:32} {value or '-':20} {DEFAULTS[key][1]}")
    click.echo("")
    if not alarms:
        click.echo("no alarms")
    for row in alarms:
        state = f"cleared {row.cleared_at:%Y-%m-%d %H:%M}" if row.cleared_at else "RAISED"
        click.echo(f"{state:22} {row.raised_at:%Y-%m-%d %H:%M}  {row.message}")


@alarm_group.command("set")
@click.argument("key", type=click.Choice(sorted(DEFAULTS)), metavar="KEY")
@click.argument("value")
@click.pass_context
@one_line_errors
def set_command(ctx: click.Context, key: str, value: str) -> None:
    """Set KEY (see `sslvpn alarm list`) to VALUE; `-` reads it from stdin (for secrets)."""
    if value == "-":
        value = sys.stdin.readline().rstrip("\n")
    elif key in SECRET_KEYS:
        raise click.UsageError(f"give {key} on stdin (VALUE -), not on the command line")
    with store(ctx, write=True) as engine, db.session(engine, write=True) as s:
        set_alarm_setting(s, key, value, actor=ACTOR)
    click.echo(f"{key} set")


@alarm_group.command("test")
@click.pass_context
@one_line_errors
def test_command(ctx: click.Context) -> None:
    """Send a test notification to each configured channel; exit 1 if one fails."""
    with store(ctx, write=True) as engine, db.session(engine, write=True) as s:
        settings = alarm_settings(s)
        to = [*listed(settings["smtp.to"]), *admin_emails(s)]
        configured = channels(settings)
        queries.record_audit(s, actor=ACTOR, action="alarm.test",
                             detail=",".join(configured) or "none")
    if not configured:
        raise click.ClickException("no channel configured: set webhook.url or smtp.host")
    now = datetime.now(UTC).isoformat()
    body: dict[str, object] = {"event": "test", "alarm": "test", "rule": "test",
                               "subject": "sslvpn", "raised_at": now, "at": now,
                               "message": "a test notification from sslvpn"}
    failed = False
    for channel in configured:
        try:
            asyncio.run(Deliverer.send(channel, body, settings, to))
        except Exception as exc:  # noqa: BLE001 - reported per channel
            click.echo(f"{channel}: FAILED: {exc}", err=True)
            failed = True
        else:
            click.echo(f"{channel}: sent")
    if failed:
        raise SystemExit(1)


COMMANDS: list[click.Command] = [alarm_group]


def refresh_crl_watched(paths: DataPaths, engine: Engine) -> None:
    """The daily CRL re-signing, raising the ``crl-resign`` alarm when it fails and clearing
    it when it succeeds again (the failure is raised on for `run_daily` to log)."""
    key = "crl-resign/crl"
    try:
        crl.refresh_crl(paths, engine)
    except Exception as exc:
        with db.session(engine, write=True) as s:
            if alarm_settings(s)["crl-resign.enabled"] == "yes":
                observe(s, Observation(bad={key: (
                    "crl-resign", "crl", f"the CRL could not be re-signed: {exc}", [])}))
        raise
    with db.session(engine, write=True) as s:
        observe(s, Observation(good={key}))
