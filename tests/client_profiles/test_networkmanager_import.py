"""Rendered profiles through NetworkManager's own OpenVPN importer (Debian's
network-manager-openvpn, loaded by libnm without a daemon), every field checked.

The importer runs in the system python3 (`nm_import.py`): python3-gi and the NM typelib are
Debian packages the venv cannot import. scripts/install-test-deps installs them; without
them this test fails, it never skips.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from client_profiles import lifecycle, reports
from client_profiles.ovpn import DATA_CIPHERS, SERVER_POLL_TIMEOUT_S
from tests.client_profiles.conftest import make_gateway

SYSTEM_PYTHON = "/usr/bin/python3"
IMPORTER = Path(__file__).with_name("nm_import.py")
ADDRESSES = ["198.18.0.1", "vpn.example.test"]
PORT = 1194
NM_PROTO = {"udp": "udp", "tcp": "tcp-client"}
CASES = [(control, proto) for control in ("tls-crypt", "tls-crypt-v2")
         for proto in ("udp", "tcp", None)]


def _import(paths: list[Path], home: Path) -> list[dict[str, object]]:
    if not Path(SYSTEM_PYTHON).exists():
        pytest.fail(f"{SYSTEM_PYTHON} missing (run scripts/install-test-deps)")
    done = subprocess.run(
        [SYSTEM_PYTHON, str(IMPORTER), *map(str, paths)], capture_output=True, text=True,
        env={"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}, timeout=60,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail("NetworkManager import failed (python3-gi, gir1.2-nm-1.0 and "
                    f"network-manager-openvpn come from scripts/install-test-deps):\n{done.stderr}")
    imported: list[dict[str, object]] = json.loads(done.stdout)
    return imported


def _block(profile: str, tag: str) -> str:
    found = re.search(rf"^<{tag}>\n(.*?)\n</{tag}>$", profile, re.S | re.M)
    assert found, tag
    return found.group(1)


def test_networkmanager_imports_every_field_of_our_profiles(tmp_path: Path) -> None:
    profiles: list[tuple[str, str | None, Path, str]] = []
    for control, proto in CASES:
        gw = make_gateway(tmp_path / f"{control}-{proto}", control_channel=control,
                          public_addresses=ADDRESSES)
        lifecycle.issue_client(gw.engine, gw.paths, user_name="alice", device="laptop",
                               actor="t")
        text = reports.render_profile(gw.engine, gw.paths, user_name="alice", device="laptop",
                                      proto=proto, actor="t").text  # type: ignore[arg-type]
        gw.engine.dispose()
        path = tmp_path / f"{control}-{proto or 'both'}.ovpn"
        path.write_text(text)
        profiles.append((control, proto, path, text))
    home = tmp_path / "home"
    imported = _import([path for _, _, path, _ in profiles], home)
    assert len(imported) == len(profiles)
    for (control, proto, path, text), connection in zip(profiles, imported, strict=True):
        files = home / ".cert" / "nm-openvpn"
        transports = [proto] if proto else ["udp", "tcp"]
        remotes = ", ".join(f"{a}:{PORT}:{NM_PROTO[t]}" for t in transports for a in ADDRESSES)
        expected = {
            "ca": str(files / f"{path.stem}-ca.pem"),
            "cert": str(files / f"{path.stem}-cert.pem"),
            "key": str(files / f"{path.stem}-key.pem"),
            control: str(files / f"{path.stem}-{control}.pem"),
            "connect-timeout": str(SERVER_POLL_TIMEOUT_S),
            "connection-type": "tls",
            "data-ciphers": DATA_CIPHERS,
            "dev": "tun",
            "remote": remotes,
            "remote-cert-tls": "server",
            "verify-x509-name": f"name:{ADDRESSES[0]}",  # the gateway certificate's CN
        }
        if proto == "tcp":
            expected["proto-tcp"] = "yes"
        assert connection == {
            "id": path.stem,
            "service_type": "org.freedesktop.NetworkManager.openvpn",
            "data": expected,
            "secrets": {},
        }, (control, proto)
        for tag in ("ca", "cert", "key", control):
            assert Path(expected[tag]).read_text().strip() == _block(text, tag), (path, tag)
