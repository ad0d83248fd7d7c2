"""`sslvpn check`, and the same checks `serve` makes before it starts anything.

Both look at the store's integrity (``PRAGMA quick_check``), every file the gateway loads
and the permissions of keys, database and folders (`client_profiles.health`); ``check``
also compares the CRL files with the store. ``serve`` refuses on any problem, one line
each; ``check`` lists them and exits non-zero. ``--allow-insecure-permissions`` turns
permission problems into warnings, for those who must run that way.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click
from sqlalchemy import Engine

from client_profiles import health
from client_profiles.health import Problem
from sslvpn.config import DataPaths
from sslvpn.store import StoreError, db, queries

log = logging.getLogger(__name__)

STORE_CHECK_SECONDS = 10.0  # the longest `serve` waits for PRAGMA quick_check at start

allow_insecure_permissions = click.option(
    "--allow-insecure-permissions", "allow_insecure", is_flag=True,
    help="Only warn about private keys, database or folders open to group or others.")


def preflight(paths: DataPaths, engine: Engine, *, given_portal: tuple[Path, Path] | None,
              allow_insecure: bool) -> None:
    """Refuse to start the gateway on a damaged store, a missing or garbled file it loads,
    or insecure permissions (warnings only when allowed); one line per problem."""
    problems = health.store_problems(engine, max_seconds=STORE_CHECK_SECONDS)
    problems += health.file_problems(paths, _control_channel(engine, problems), given_portal)
    problems += health.permission_problems(paths, sqlite=_is_sqlite(engine),
                                           extra_keys=[given_portal[1]] if given_portal else ())
    refused = [p for p in problems if not (allow_insecure and p.kind == "permissions")]
    for problem in problems:
        if problem not in refused:
            log.warning("allowed by --allow-insecure-permissions: %s", problem)
    if refused:
        for problem in refused:
            click.echo(f"error: {problem}", err=True)
        raise click.exceptions.Exit(1)


def _control_channel(engine: Engine, problems: list[Problem]) -> str | None:
    """The stored control channel, or None (with the reason) when the store cannot say."""
    try:
        with db.session(engine, write=False) as s:
            return queries.get_settings(s).control_channel
    except StoreError as exc:
        problems.append(Problem(Path(engine.url.database or "database"), str(exc),
                                "run `sslvpn check`", "store"))
        return None


def _is_sqlite(engine: Engine) -> bool:
    return engine.url.get_backend_name() == "sqlite"


def report(problems: list[Problem], *, allow_insecure: bool, as_json: bool,
           data_dir: Path) -> int:
    """Print the problems (or that all is well); the exit status, 1 for any refused one."""
    allowed = [allow_insecure and p.kind == "permissions" for p in problems]
    failed = not all(allowed)
    if as_json:
        rows = [{"file": str(p.path), "problem": p.problem, "fix": p.fix, "kind": p.kind,
                 "allowed": ok} for p, ok in zip(problems, allowed, strict=True)]
        click.echo(json.dumps({"ok": not failed, "data_dir": str(data_dir), "problems": rows},
                              indent=2))
    else:
        for problem, ok in zip(problems, allowed, strict=True):
            click.echo(f"warning: {problem}" if ok else str(problem))
        if not problems:
            click.echo(f"ok: {data_dir}: store intact, files readable, permissions private, "
                       "CRL agrees with the store")
    return 1 if failed else 0
