"""What every sub-command receives from the global options."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CliContext:
    data_dir: Path
    database_url: str | None  # None: the SQLite file inside data_dir
