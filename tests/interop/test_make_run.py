"""The README's run command (`make run`: `init` when the data folder is absent, then `serve`)
on a fresh data folder, in a private network namespace so nothing touches the host.

It runs the default number of workers (one per usable core). It must print where the gateway
and the portal are (and the one-time admin password on the first start only), the printed
URL must answer, and SIGTERM must end it with status 0 and the TUN gone. A taken portal port
is one clear line and exit status 1, with nothing left.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.conftest import SSLVPN
from tests.netns import Namespace, NetnsLab, file_contains, wait_until

HOLD = """
import socket, time
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)
time.sleep(300)
"""
FETCH = """
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
    print(r.status, r.geturl())
    print(r.read().decode())
"""


@pytest.fixture
def ns() -> Iterator[Namespace]:
    lab = NetnsLab("sx")
    try:
        yield lab.namespace("run")
    finally:
        lab.close()


def _serve(ns: Namespace, data: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start `serve` as `make run` does (portal on loopback port 0); wait for the portal URL."""
    proc = ns.spawn([SSLVPN, "--data-dir", str(data), "serve", "--portal-listen", "127.0.0.1:0"],
                    log=log)
    started = wait_until(lambda: proc.poll() is not None or file_contains(log, "portal: ")(), 30)
    assert started and proc.poll() is None, log.read_text()
    match = re.search(r"^portal: (http://127\.0\.0\.1:\d+/)$", log.read_text(), re.MULTILINE)
    assert match, log.read_text()
    return proc, match.group(1)


def _stop(ns: Namespace, proc: subprocess.Popen[bytes], log: Path) -> None:
    assert ns.lab.stop(proc, timeout=20) == 0, log.read_text()
    assert "sslvpn" not in ns.run("ip", "-o", "link", "show"), "the TUN outlived the gateway"


@pytest.mark.interop
def test_run_command_prints_where_to_go_and_stops_cleanly(ns: Namespace, tmp_path: Path) -> None:
    data = tmp_path / "var"
    ns.run(SSLVPN, "--data-dir", str(data), "init", "--public-address", "127.0.0.1", timeout=120)
    log = tmp_path / "serve.log"
    proc, url = _serve(ns, data, log)
    # the password is printed right after the URL, once the admin exists
    assert wait_until(file_contains(log, "one-time password "), 20), log.read_text()
    # by default one worker per usable core, each naming itself (one process: no name)
    workers = len(os.sched_getaffinity(0))
    named = "" if workers == 1 else f"worker \\d+/{workers}: "
    listening = re.compile(f"^{named}gateway: OpenVPN on udp 0\\.0\\.0\\.0:1194, .*tcp "
                           "0\\.0\\.0\\.0:1194", re.MULTILINE)
    assert wait_until(lambda: len(listening.findall(log.read_text())) == workers, 30), \
        log.read_text()
    assert "sslvpn0" in ns.run("ip", "-o", "link", "show")
    page = ns.run(sys.executable, "-c", FETCH, url + "login")
    assert page.startswith(f"200 {url}login") and 'name="csrf_token"' in page, page
    _stop(ns, proc, log)

    second = tmp_path / "serve2.log"
    proc, url = _serve(ns, data, second)
    assert ns.run(sys.executable, "-c", FETCH, url).startswith(f"200 {url}login")
    _stop(ns, proc, second)
    assert "one-time password" not in second.read_text()  # the admin exists since the first

    holder_log = tmp_path / "hold.log"
    ns.spawn([sys.executable, "-c", HOLD], log=holder_log)
    assert wait_until(lambda: holder_log.read_text().strip().isdigit(), 10)
    taken = f"127.0.0.1:{holder_log.read_text().strip()}"
    result = subprocess.run(["ip", "netns", "exec", ns.name, SSLVPN, "--data-dir", str(data),
                             "serve", "--portal-listen", taken],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"Error: cannot start the portal on {taken}: " in result.stderr, result.stderr
    assert "sslvpn" not in ns.run("ip", "-o", "link", "show")
