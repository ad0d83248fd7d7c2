"""Structured log events, and the log output of the long-running commands (text or JSON).

An event is an ordinary logging call whose text a person reads, with ``extra=fields(...)``
naming the event and carrying its fields: ``session.connected``, ``session.disconnected``,
``handshake.refused``, ``admin.action``, ``tunnel.state``. ``configure`` installs the
output: ``text`` is the familiar line; ``json`` is one JSON object per line
(python-json-logger) with timestamp, level, logger, node, event, message and the fields
(lines that are not events carry ``"event": "log"``).

No secrets, ever: nothing logs key material, passwords or pre-shared keys, and as a second
guard a field whose name says secret is replaced by ``[redacted]`` before any output sees it.
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "[redacted]"
_SECRET_WORDS = ("password", "passphrase", "psk", "secret", "token", "private", "key_pem")


@functools.lru_cache(maxsize=1024)
def _secret_named(name: str) -> bool:
    """A field name that says secret. Names come from the code (a record's attributes and
    the ``extra`` keys), so each is judged once: every log line of a handshake burst asked
    the same ~25 names again (23 of a line's 37 us here)."""
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def fields(event: str, **values: object) -> dict[str, object]:
    """``extra=`` for a logging call that is the event ``event`` with ``values``."""
    return {"event": event, **values}


class _Stamp(logging.Filter):
    """Adds the node and a default event to every record; blanks secret-named fields."""

    def __init__(self, node: str | None) -> None:
        super().__init__()
        self._node = node

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self._node
        if not hasattr(record, "event"):
            record.event = "log"
        for name in [name for name in vars(record) if _secret_named(name)]:
            setattr(record, name, REDACTED)
        return True


def make_handler(log_format: str, *, node: str | None,
                 stream: TextIO | None = None) -> logging.Handler:
    """A handler writing ``log_format`` (one of LOG_FORMATS) to ``stream`` (stderr)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(
            "%(levelname)s %(name)s %(node)s %(event)s %(message)s", timestamp=True,
            rename_fields={"levelname": "level", "name": "logger"}))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.addFilter(_Stamp(node))
    return handler


def configure(log_format: str, *, node: str | None, verbose: bool = False) -> None:
    """Log to stderr as ``log_format``; alembic only when it acts. Like ``basicConfig``, it
    leaves a logging already set up (a test's) as it is."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        handlers=[make_handler(log_format, node=node)])
    if not verbose:  # migrations that found nothing to do are not news
        logging.getLogger("alembic").setLevel(logging.WARNING)
