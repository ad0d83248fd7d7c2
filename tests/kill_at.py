"""Run the real `sslvpn` CLI and SIGKILL it at the Nth call of os.replace or os.rename.

    python tests/kill_at.py replace 2 after --data-dir var cert revoke alice

kills the process right after its second os.replace returns (``before``: instead of
making the call), so a test can aim a crash at each file replacement deterministically.
Used only by the crash tests; nothing in the product knows about it.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from sslvpn.cli import main


def _killing(real: Callable[..., Any], nth: int, after: bool) -> Callable[..., Any]:
    calls = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == nth and not after:
            os.kill(os.getpid(), signal.SIGKILL)
        result = real(*args, **kwargs)
        if calls == nth and after:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    return wrapper


if __name__ == "__main__":
    name, nth, when, *cli_args = sys.argv[1:]
    if name not in ("replace", "rename") or when not in ("before", "after"):
        raise SystemExit("usage: kill_at.py replace|rename N before|after SSLVPN-ARGS...")
    setattr(os, name, _killing(getattr(os, name), int(nth), when == "after"))
    main(cli_args, prog_name="sslvpn")
