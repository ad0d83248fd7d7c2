"""`sslvpn portal --metrics-listen`: a portal-only process serves its own /metrics (process
metrics, certificate expiry) and /readyz, checked by the real promtool."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from click.testing import CliRunner

from sslvpn.cli import main
from tests.netns import wait_until
from tests.runtime.test_metrics import promtool_check, samples

SSLVPN = str(Path(sys.executable).with_name("sslvpn"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 (loopback)
            return str(answer.read().decode())
    except OSError:
        return None


def test_a_portal_only_process_serves_its_own_metrics(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = CliRunner().invoke(main, ["--data-dir", str(data), "init",
                                       "--public-address", "198.18.0.1"])
    assert result.exit_code == 0, result.output
    port = _free_port()
    portal = subprocess.Popen(
        [SSLVPN, "--data-dir", str(data), "portal", "--listen", f"127.0.0.1:{_free_port()}",
         "--metrics-listen", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_until(lambda: _get(f"{base}/metrics") is not None, 30)
        text = _get(f"{base}/metrics")
        assert text is not None
        promtool_check(text)
        kinds = {labels for name, labels in samples(text)
                 if name == "sslvpn_certificate_expiry_timestamp_seconds"}
        assert (("kind", "ca"),) in kinds and (("kind", "crl_next_update"),) in kinds
        assert "sslvpn_sessions" not in text  # no gateway in this process
        assert _get(f"{base}/readyz") == '{"ready": true, "checks": {"store": true}}'
    finally:
        portal.terminate()
        portal.wait(10)
