"""VPN two-factor with the real openvpn 2.6 client against `sslvpn serve`: the profile's
static-challenge makes the client ask (here through its management interface, as a GUI
does) for the password and the code. A wrong code gets AUTH_FAILED with the reason; the
right one connects and the pushed auth-token carries the client through a reconnect
without asking again (without the token it would resend its used code and be refused);
the same code from another client is refused as a replay."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from client_profiles import two_factor
from sslvpn.cli import main
from sslvpn.store import db, queries
from tests.interop.conftest import VPC_HOST, Topology, build_topology, sslvpn
from tests.interop.test_openvpn_client import CONNECTED, OpenVpnClient
from tests.netns import file_contains, wait_until
from tests.runtime.test_vpn_two_factor import answer

pytestmark = pytest.mark.interop

PASSWORD = "violet-harbour-lantern-9"  # noqa: S105 (a test credential)
PROMPT = ">PASSWORD:Need 'Auth' username/password SC:1,Code from your authenticator app"


@pytest.fixture(params=[1, 2], ids=["serve", "serve-workers-2"])
def topology(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Topology]:
    """One gateway process, or two workers: a reconnect may reach the other one, which
    checks the token and the code's replay alike (nothing is kept in a process)."""
    with build_topology(tmp_path, prefix="v11f", start_timeout=60,
                        serve_args=("--no-portal", "--workers", str(request.param))) as topo:
        log = topo.gateway_log
        if not wait_until(lambda: log.read_text().count("listening on tcp") >= request.param,
                          60):
            pytest.fail("the workers did not start:\n" + log.read_text())
        yield topo


class Management:
    """The client's management interface on a unix socket (it crosses namespaces): what a
    GUI does to answer the password prompt."""

    def __init__(self, path: Path) -> None:
        assert wait_until(path.exists, 20), "openvpn opened no management socket"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.settimeout(0.5)
        self.seen: list[str] = []
        self._buffer = b""

    def expect(self, prefix: str, timeout: float = 30) -> str:
        """The next line starting with ``prefix`` (every line read is kept in ``seen``)."""
        deadline = time.monotonic() + timeout
        start = len(self.seen)
        while time.monotonic() < deadline:
            for line in self.seen[start:]:
                if line.startswith(prefix):
                    self.seen.remove(line)
                    return line
            start = len(self.seen)
            self._read()
        pytest.fail(f"no {prefix!r} from the management interface: {self.seen[-20:]}")

    def _read(self) -> None:
        with contextlib.suppress(TimeoutError):
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError(f"management interface closed: {self.seen[-20:]}")
            self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        self.seen += [line.decode(errors="replace").rstrip("\r") for line in lines]

    def send(self, command: str) -> None:
        self.sock.sendall(command.encode() + b"\n")

    def log_in(self, password: str) -> None:
        self.expect(PROMPT)
        self.send('username "Auth" alice')
        self.expect("SUCCESS: 'Auth' username entered")
        self.send(f'password "Auth" "{password}"')
        self.expect("SUCCESS: 'Auth' password entered")

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def client(topo: Topology, profile: Path, name: str, *extra: str
           ) -> Iterator[tuple[OpenVpnClient, Management]]:
    """An openvpn client that asks its management interface for credentials and stops at
    its first AUTH_FAILED."""
    path = topo.work / f"{name}.mgmt"
    vpn = OpenVpnClient(topo, profile, "--management", str(path), "unix",
                        "--management-query-passwords", "--auth-retry", "none", *extra)
    management = None
    try:
        management = Management(path)
        yield vpn, management
    finally:
        if management is not None:
            management.close()
        vpn.stop()


def test_the_real_client_connects_with_password_and_code(topology: Topology) -> None:
    data_dir = topology.data_dir
    serial = topology.issue("alice", "laptop")
    result = CliRunner().invoke(main, ["--data-dir", str(data_dir), "user", "passwd", "alice",
                                       "--password-stdin"], input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    secret = two_factor.new_secret()
    engine = db.open_engine(f"sqlite:///{data_dir / 'sslvpn.db'}")
    try:
        with db.session(engine, write=True) as s:
            queries.get_user(s, name="alice").totp_secret = secret
    finally:
        engine.dispose()
    sslvpn(data_dir, "user", "2fa-require", "--vpn")
    profile = topology.profile("alice", "laptop", "udp")
    assert "static-challenge" in profile.read_text()

    with client(topology, profile, "wrong") as (vpn, management):
        code = two_factor.code_at(secret, time.time())
        wrong = f"{(int(code) + 500_000) % 1_000_000:06d}"
        management.log_in(answer(PASSWORD, wrong))
        vpn.wait_for("AUTH_FAILED,wrong or used two-factor code")
        assert CONNECTED not in vpn.text()

    code = two_factor.code_at(secret, time.time())
    with client(topology, profile, "right", "--reneg-sec", "5") as (vpn, management):
        management.log_in(answer(PASSWORD, code))
        vpn.wait_for(CONNECTED)
        # Renegotiations (every 5 s here) answer with the token: nothing asks again.
        assert wait_until(lambda: vpn.text().count("Control Channel:") >= 3, 30), vpn.text()
        assert topology.client_ns.ok("ping", "-c", "1", "-W", "2", VPC_HOST)
        # A reconnect: the client sends the pushed token instead of its used code, and is
        # not asked again.
        management.send("signal SIGUSR1")
        assert wait_until(lambda: vpn.text().count(CONNECTED) == 2, 40), vpn.text()[-3000:]
        assert "AUTH_FAILED" not in vpn.text()
        assert not any(line.startswith(">PASSWORD:Need") for line in management.seen)
        assert topology.client_ns.ok("ping", "-c", "1", "-W", "2", VPC_HOST)
        listed = json.loads(sslvpn(topology.data_dir, "sessions", "--json").output)
        assert serial in [s["certificate_serial"] for s in listed["sessions"]]

    with client(topology, profile, "replay") as (vpn, management):
        management.log_in(answer(PASSWORD, code))  # the code the right client used
        vpn.wait_for("AUTH_FAILED,wrong or used two-factor code")
    log = topology.gateway_log
    assert wait_until(file_contains(log, "wrong or used two-factor code"), 5)
    assert PASSWORD not in log.read_text() and secret not in log.read_text()
