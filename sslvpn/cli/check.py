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

from client_profiles import crl, health
from client_profiles.health import Problem
from client_profiles.pkifiles import LifecycleError
from sslvpn.cli.setup import one_line_errors, paths_of, sqlite_store, store
from sslvpn.config import DataPaths
from sslvpn.store import StoreError, db, queries

log = logging.getLogger(__name__)

STORE_FIX = "mend the database or restore the last good backup with `sslvpn restore FILE`"
STORE_CHECK_SECONDS = 10.0  # the longest `serve` waits for PRAGMA quick_check at start

allow_insecure_permissions = click.option(
    "--allow-insecure-permissions", "allow_insecure", is_flag=True,
    help="Only warn about private keys, database or folders open to group or others.")


def preflight(paths: DataPaths, engine: Engine, *, given_portal: tuple[Path, Path] | None,
              allow_insecure: bool) -> None:
    """Refuse to start the gateway on a damaged store, a missing or garbled file it loads,
    or insecure permissions (warnings only when allowed); one line per problem."""
    problems = health.store_problems(engine, max_seconds=STORE_CHECK_SECONDS)
    problems += health.file_problems(paths, _control_channel(engine, problems))
    if given_portal is not None:
        problems += health.portal_problems(*given_portal, given=True)
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


@click.command("check")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@allow_insecure_permissions
@click.pass_context
@one_line_errors
def check_command(ctx: click.Context, as_json: bool, allow_insecure: bool) -> None:
    """Check the store's integrity, every file the gateway loads, the permissions of keys,
    database and folders, and that the CRL agrees with the store. Exits 0 when all is
    well, else 1 with one line per problem: the file, what is wrong, the fix."""
    paths = paths_of(ctx)
    problems = _problems(ctx, paths)
    ctx.exit(report(problems, allow_insecure=allow_insecure, as_json=as_json,
                    data_dir=paths.data_dir))


def _problems(ctx: click.Context, paths: DataPaths) -> list[Problem]:
    """Everything wrong with the data folder; reads only, so a read-only folder works."""
    if not paths.data_dir.is_dir():
        return [Problem(paths.data_dir, "does not exist", "run `sslvpn init` or give the "
                        "right --data-dir", "file")]
    problems: list[Problem] = []
    crl_found: list[Problem] = []
    control_channel = None
    sqlite = sqlite_store(ctx)
    try:
        with store(ctx, write=False) as engine:
            problems += health.store_problems(engine)  # the whole file, however long
            control_channel = _control_channel(engine, problems)
            crl_found = _crl_problems(paths, engine)
    except StoreError as exc:
        problems.append(Problem(paths.database if sqlite else Path("database"), str(exc),
                                STORE_FIX, "store"))
    problems += health.file_problems(paths, control_channel) + crl_found
    if paths.portal_cert.exists() or paths.portal_key.exists():
        problems += health.portal_problems(paths.portal_cert, paths.portal_key, given=False)
    return problems + health.permission_problems(paths, sqlite=sqlite)


def _crl_problems(paths: DataPaths, engine: Engine) -> list[Problem]:
    """The CRL files against the CRL and revocations the store holds."""
    try:
        disagreement = crl.crl_disagreement(paths, engine)
    except (StoreError, LifecycleError, ValueError) as exc:
        disagreement = str(exc)
    if disagreement is None:
        return []
    return [Problem(paths.crl_pem, f"disagrees with the store: {disagreement}",
                    "`sslvpn crl` signs and publishes it again from the store", "crl")]


def _control_channel(engine: Engine, problems: list[Problem]) -> str | None:
    """The stored control channel, or None (with the reason) when the store cannot say."""
    try:
        with db.session(engine, write=False) as s:
            return queries.get_settings(s).control_channel
    except StoreError as exc:
        problems.append(Problem(Path(engine.url.database or "database"), str(exc), STORE_FIX,
                                "store"))
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


COMMANDS: list[click.Command] = [check_command]
