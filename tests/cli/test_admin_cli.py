"""`sslvpn init/user/cert/crl/profile` through click's CliRunner against a temp data folder.

Every error path prints exactly one line on stderr, exits non-zero and leaves no
half-written files or rows behind.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from sqlmodel import select

from sslvpn.cli import main
from sslvpn.config import DataPaths, database_url
from sslvpn.store.db import open_engine, session
from sslvpn.store.models import Certificate, GatewaySettings, User
from sslvpn.store.queries import get_user

Run = Callable[..., Result]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "var"


@pytest.fixture
def run(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    monkeypatch.delenv("SSLVPN_CA_PASSPHRASE", raising=False)
    monkeypatch.delenv("SSLVPN_DATABASE_URL", raising=False)

    def invoke(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> Result:
        return CliRunner().invoke(
            main, ["--data-dir", str(data_dir), *args], input=stdin, env=env, catch_exceptions=False
        )

    return invoke


@pytest.fixture
def ready(run: Run) -> Run:
    """An initialised data folder with user alice."""
    assert run("init", "--public-address", "vpn.example.test").exit_code == 0
    assert run("user", "add", "alice").exit_code == 0
    return run


def _one_line_error(result: Result, fragment: str) -> None:
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in result.output


def _count(data_dir: Path, model: type[User] | type[Certificate]) -> int:
    engine = open_engine(database_url(data_dir, None))
    try:
        with session(engine, write=False) as s:
            return len(s.exec(select(model)).all())
    finally:
        engine.dispose()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_init_defaults_and_file_modes(run: Run, data_dir: Path) -> None:
    result = run("init", "--public-address", "vpn.example.test")
    assert result.exit_code == 0, result.output
    engine = open_engine(database_url(data_dir, None))
    with session(engine, write=False) as s:
        settings = s.exec(select(GatewaySettings)).one()
    engine.dispose()
    assert settings.protocols == "both" and settings.port == 1194
    assert settings.pool_cidr == "10.8.0.0/24"
    paths = DataPaths(data_dir)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(paths.database.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.ca_key.stat().st_mode) == 0o600
    assert b"ENCRYPTED" not in paths.ca_key.read_bytes()


def test_init_options_are_stored(run: Run, data_dir: Path) -> None:
    result = run(
        "init", "--public-address", "a.example", "--public-address", "198.18.0.1",
        "--port", "443", "--proto", "tcp", "--vpc", "10.0.0.0/16", "--vpc", "10.1.0.0/16",
        "--pool", "10.9.0.0/24", "--dns", "10.0.0.2", "--key-type", "rsa3072",
        "--control-channel", "tls-crypt-v2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    engine = open_engine(database_url(data_dir, None))
    with session(engine, write=False) as s:
        settings = s.exec(select(GatewaySettings)).one()
    engine.dispose()
    assert settings.public_addresses == ["a.example", "198.18.0.1"]
    assert (settings.port, settings.protocols, settings.pool_cidr) == (443, "tcp", "10.9.0.0/24")
    assert settings.vpc_networks == ["10.0.0.0/16", "10.1.0.0/16"]
    assert settings.dns_servers == ["10.0.0.2"]
    assert settings.control_channel == "tls-crypt-v2"
    assert b"BEGIN PRIVATE KEY" in DataPaths(data_dir).ca_key.read_bytes()


def test_init_twice_changes_nothing(ready: Run, data_dir: Path) -> None:
    before = _snapshot(data_dir / "pki")
    _one_line_error(ready("init", "--public-address", "other.example"), "already initialised")
    assert _snapshot(data_dir / "pki") == before


def test_failed_init_leaves_no_folder(run: Run, data_dir: Path) -> None:
    _one_line_error(run("init", "--public-address", "a.example", "--pool", "nonsense"), "pool")
    assert not data_dir.exists()


def test_failed_init_in_an_existing_folder_leaves_it_empty(run: Run, data_dir: Path) -> None:
    data_dir.mkdir()
    _one_line_error(run("init", "--public-address", "a.example", "--vpc", "10.0.0.1/8"), "VPC")
    assert list(data_dir.iterdir()) == []


def test_user_verbs(ready: Run, data_dir: Path) -> None:
    added = ready("user", "add", "bob", "--email", "bob@example.com", "--admin",
                  "--password-stdin", stdin="a long password\n")  # fmt: skip
    assert added.exit_code == 0, added.output
    assert ready("user", "disable", "bob").exit_code == 0
    listing = ready("user", "list").stdout
    assert "bob" in listing and "admin" in listing and "disabled" in listing
    assert "a long password" not in listing
    assert ready("user", "enable", "bob").exit_code == 0
    assert "disabled" not in ready("user", "list").stdout


def test_duplicate_user_is_one_line_and_no_row(ready: Run, data_dir: Path) -> None:
    _one_line_error(ready("user", "add", "alice"), "already exists")
    assert _count(data_dir, User) == 1


@pytest.mark.parametrize(
    "args",
    [
        ("cert", "issue", "nobody"),
        ("profile", "nobody"),
        ("cert", "revoke", "nobody"),
        ("user", "disable", "nobody"),
        ("user", "enable", "nobody"),
    ],
)
def test_unknown_user_is_one_line(ready: Run, data_dir: Path, args: tuple[str, ...]) -> None:
    _one_line_error(ready(*args), "nobody")
    assert _count(data_dir, Certificate) == 1  # only the server certificate


def test_bad_input_is_one_line(ready: Run) -> None:
    _one_line_error(ready("user", "add", "bad name"), "user name")
    _one_line_error(ready("user", "add", "bob", "--password-stdin", stdin="\n"), "password")
    _one_line_error(ready("cert", "issue", "alice", "--device", "a/b"), "device")
    _one_line_error(ready("cert", "renew", "abcdef"), "abcdef")
    _one_line_error(ready("profile", "alice"), "no valid certificate")
    huge = ready("cert", "list", "--expiring", "99999999999999999999")
    assert huge.exit_code == 2 and "not in the range 0<=x<=36500" in huge.stderr
    assert "Traceback" not in huge.output


@pytest.mark.parametrize(
    "args",
    [
        ("user", "list"),
        ("cert", "list"),
        ("cert", "issue", "alice"),
        ("crl",),
        ("profile", "alice"),
        ("user", "add", "alice"),
    ],
)
def test_missing_data_folder_is_one_line(run: Run, data_dir: Path, args: tuple[str, ...]) -> None:
    _one_line_error(run(*args), "does not exist")
    assert not data_dir.exists()


def test_folder_without_ca_is_one_line(run: Run, data_dir: Path) -> None:
    data_dir.mkdir()
    _one_line_error(run("cert", "list"), "no CA")


def test_corrupt_database_is_one_line_and_untouched(ready: Run, data_dir: Path) -> None:
    database = DataPaths(data_dir).database
    database.write_bytes(b"this is not a database" * 100)
    before = database.read_bytes()
    for args in (("user", "list"), ("cert", "issue", "alice"), ("cert", "list")):
        _one_line_error(ready(*args), "not an sslvpn database")
    assert database.read_bytes() == before


def test_ca_passphrase(run: Run, data_dir: Path) -> None:
    init = run("init", "--public-address", "a.example", "--ca-passphrase-stdin", stdin="s3cret\n")
    assert init.exit_code == 0, init.output
    assert "s3cret" not in init.output
    assert b"ENCRYPTED PRIVATE KEY" in DataPaths(data_dir).ca_key.read_bytes()
    assert run("user", "add", "alice").exit_code == 0
    wrong = run("cert", "issue", "alice", env={"SSLVPN_CA_PASSPHRASE": "guess"})
    _one_line_error(wrong, "passphrase is wrong")
    assert "guess" not in wrong.output
    _one_line_error(run("cert", "issue", "alice"), "SSLVPN_CA_PASSPHRASE")
    _one_line_error(run("crl"), "SSLVPN_CA_PASSPHRASE")
    assert _count(data_dir, Certificate) == 1
    right = run("cert", "issue", "alice", env={"SSLVPN_CA_PASSPHRASE": "s3cret"})
    assert right.exit_code == 0, right.output


def test_ca_passphrase_from_environment_at_init(run: Run, data_dir: Path) -> None:
    result = run("init", "--public-address", "a.example", env={"SSLVPN_CA_PASSPHRASE": "envpw"})
    assert result.exit_code == 0 and "encrypted" in result.stdout
    assert b"ENCRYPTED PRIVATE KEY" in DataPaths(data_dir).ca_key.read_bytes()


def _serial(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout.split()[1]


def test_certificate_lifecycle_through_the_cli(ready: Run, data_dir: Path) -> None:
    first = _serial(ready("cert", "issue", "alice", "--device", "laptop", "--days", "10"))
    _serial(ready("cert", "issue", "alice", "--days", "200"))
    listing = ready("cert", "list").stdout
    for kind in ("ca ", "crl ", "server ", "client "):
        assert kind in listing
    expiring = ready("cert", "list", "--expiring", "30").stdout
    assert first in expiring and "alice.laptop" in expiring
    assert "server" not in expiring and " ca " not in f" {expiring}"
    renewed = ready("cert", "renew", first)
    assert renewed.exit_code == 0, renewed.output
    new = renewed.stdout.split()[3]
    assert "the old certificate works until" in renewed.stdout
    listing = ready("cert", "list").stdout
    [old_line] = [line for line in listing.splitlines() if first in line]
    assert " valid " in old_line and f"renewed as {new}, works until" in old_line
    assert any(new in line and " valid " in line for line in listing.splitlines())
    revoked = ready("cert", "revoke", new, "--reason", "keyCompromise")
    assert revoked.exit_code == 0 and new in revoked.stdout
    everything = ready("cert", "revoke", "alice")
    assert everything.exit_code == 0
    assert len(everything.stdout.strip().splitlines()) == 2  # the renewed one + the 200-day one
    _one_line_error(ready("cert", "revoke", "alice"), "no certificate")
    _one_line_error(ready("cert", "revoke", new), "already revoked")


def test_certificates_are_found_by_cn_and_by_serial_in_any_usual_form(ready: Run) -> None:
    """openssl prints serials in upper case with leading zeros (x509 -serial) or colons
    (crl -text shows octets); admins also paste lower case and decimal."""
    laptop = _serial(ready("cert", "issue", "alice", "--device", "laptop"))
    renewed = ready("cert", "renew", "alice.laptop")
    assert renewed.exit_code == 0 and renewed.stdout.split()[1] == laptop, renewed.output
    new = renewed.stdout.split()[3]

    def colons(serial: str) -> str:
        octets = f"{int(serial, 16):040x}".upper()
        return ":".join(octets[i:i + 2] for i in range(0, len(octets), 2))

    for spell in (lambda s: f"00{s.upper()}", colons, lambda s: str(int(s, 16))):
        form = spell(new)
        found = ready("cert", "renew", form, "--overlap-days", "0")
        assert found.exit_code == 0 and found.stdout.split()[1] == new, (form, found.output)
        new = found.stdout.split()[3]
    revoked = ready("cert", "revoke", "alice.laptop")  # the current one and the overlapping
    assert revoked.exit_code == 0 and laptop in revoked.stdout and new in revoked.stdout
    _one_line_error(ready("cert", "revoke", "alice.laptop"), "no serial, user or valid")
    _one_line_error(ready("cert", "renew", "bob.phone"), "no certificate has the serial or CN")


def test_a_name_that_is_both_a_user_and_a_cn_is_refused(ready: Run) -> None:
    """User names may hold dots: `cert revoke alice.laptop` must not pick the user
    alice.laptop (every device of theirs) over alice's laptop, nor the other way round."""
    laptop = _serial(ready("cert", "issue", "alice", "--device", "laptop"))
    assert ready("user", "add", "alice.laptop").exit_code == 0
    phone = _serial(ready("cert", "issue", "alice.laptop", "--device", "phone"))
    _one_line_error(ready("cert", "revoke", "alice.laptop"), "both a user and a device's CN")
    listing = ready("cert", "list").stdout
    assert "revoked" not in listing and laptop in listing and phone in listing
    assert laptop in ready("cert", "revoke", laptop).stdout


def test_a_device_has_one_certificate_and_profile_finds_the_only_device(
    ready: Run, data_dir: Path
) -> None:
    first = _serial(ready("cert", "issue", "alice", "--device", "laptop"))
    _one_line_error(ready("cert", "issue", "alice", "--device", "laptop"),
                    f"already has a valid certificate for device 'laptop' ({first}); renew it")
    assert _count(data_dir, Certificate) == 2  # the gateway's and the laptop's
    profile = ready("profile", "alice")
    assert profile.exit_code == 0 and "# alice.laptop @" in profile.stdout, profile.output
    ready("cert", "renew", "alice.laptop")  # the overlapping old one is not a second device
    assert ready("profile", "alice").exit_code == 0
    _serial(ready("cert", "issue", "alice", "--device", "phone"))
    _one_line_error(ready("profile", "alice"), "several devices: laptop, phone; choose one")
    ready("cert", "revoke", "alice.laptop")
    _serial(ready("cert", "issue", "alice", "--device", "laptop"))  # revoked: a new one is fine


def test_user_delete_passwd_unlock_and_limits(ready: Run, data_dir: Path) -> None:
    serial = _serial(ready("cert", "issue", "alice", "--device", "laptop"))
    changed = ready("user", "passwd", "alice", "--password-stdin", stdin="a-long-password\n")
    assert changed.exit_code == 0 and "password of alice changed" in changed.stdout
    assert _one_time_until(data_dir, "alice") is None  # her own
    generated = ready("user", "passwd", "alice")
    assert generated.exit_code == 0 and generated.stdout.startswith("new password for alice: ")
    assert _one_time_until(data_dir, "alice") is not None  # changed at her first login
    _one_line_error(ready("user", "passwd", "alice", "--password-stdin", stdin="short\n"),
                    "at least 12 characters")
    _one_line_error(ready("user", "passwd", "alice", "--password-stdin", stdin="qwerty123456\n"),
                    "common or guessable")
    _one_line_error(ready("user", "add", "carol", "--password-stdin", stdin="password1234\n"),
                    "common or guessable")
    assert ready("user", "unlock", "alice").stdout == "unlocked alice\n"
    limits = ready("user", "limits", "alice", "--max-devices", "1", "--max-sessions", "2")
    assert limits.stdout == "alice: max devices 1, max sessions 2\n"
    one = ready("user", "limits", "alice", "--max-sessions", "default")  # devices stay
    assert one.stdout == "alice: max devices 1, max sessions default\n"
    assert ready("user", "limits", "alice").exit_code != 0  # nothing to set
    _one_line_error(ready("cert", "issue", "alice", "--device", "phone"),
                    "has 1 valid devices, the most allowed (1)")
    deleted = ready("user", "delete", "alice")
    assert deleted.stdout == "deleted alice; revoked 1 certificate(s)\n"
    assert "alice" not in ready("user", "list").stdout
    crl = x509.load_pem_x509_crl((data_dir / "pki" / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
    _one_line_error(ready("user", "delete", "alice"), "no user named 'alice'")


def _one_time_until(data_dir: Path, name: str) -> datetime | None:
    engine = open_engine(database_url(data_dir, None))
    try:
        with session(engine, write=False) as s:
            return get_user(s, name=name).password_one_time_until
    finally:
        engine.dispose()


def test_renew_the_gateway_certificate(ready: Run, data_dir: Path) -> None:
    server_line = next(
        line for line in ready("cert", "list").stdout.splitlines() if line.startswith("server")
    )
    old = server_line.split()[-1]
    renewed = ready("cert", "renew", old)
    assert renewed.exit_code == 0, renewed.output
    assert "superseded" in ready("cert", "list").stdout


def test_crl_command_writes_pem_or_der(ready: Run, tmp_path: Path) -> None:
    pem = ready("crl")
    assert pem.exit_code == 0 and pem.stdout.startswith("-----BEGIN X509 CRL-----")
    assert "valid until" in pem.stderr
    out = tmp_path / "crl.der"
    assert ready("crl", "-o", str(out), "--format", "der").exit_code == 0
    assert out.read_bytes()[:1] == b"\x30"
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def test_profile_command(ready: Run, tmp_path: Path) -> None:
    _serial(ready("cert", "issue", "alice", "--device", "phone"))
    text = ready("profile", "alice", "--device", "phone").stdout
    assert text.startswith("# alice.phone") and "<key>" in text and "<tls-crypt>" in text
    assert "remote vpn.example.test 1194 udp" in text
    assert "remote vpn.example.test 1194 tcp-client" in text
    out = tmp_path / "alice.ovpn"
    tcp = ready("profile", "alice", "--device", "phone", "--proto", "tcp", "-o", str(out))
    assert tcp.exit_code == 0 and tcp.stdout == ""
    assert tcp.stderr == ("Needs OpenVPN 2.4 or later, or OpenVPN 3 (Connect). Live sessions of "
                          "older clients: sslvpn sessions --older-than 2.4\n")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert "udp" not in out.read_text().split("<ca>")[0]
    assert ready("user", "disable", "alice").exit_code == 0
    _one_line_error(ready("profile", "alice", "--device", "phone"), "disabled")


def test_profile_and_listing_need_only_the_ca_certificate(ready: Run, data_dir: Path) -> None:
    """An offline CA: with ca.key moved away, profiles and reports still work, and the
    operations that sign say what is missing instead of sending the operator to init."""
    _serial(ready("cert", "issue", "alice", "--device", "phone"))
    paths = DataPaths(data_dir)
    paths.ca_key.rename(data_dir.parent / "ca.key.offline")
    profile = ready("profile", "alice", "--device", "phone")
    assert profile.exit_code == 0, profile.output
    assert "<ca>" in profile.stdout
    assert ready("cert", "list").exit_code == 0
    issue = ready("cert", "issue", "alice", "--device", "laptop")
    _one_line_error(issue, "CA key is not in")
    assert "sslvpn init" not in issue.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("init",),
        ("user",),
        ("user", "add"),
        ("user", "list"),
        ("user", "disable"),
        ("user", "enable"),
        ("cert",),
        ("cert", "issue"),
        ("cert", "list"),
        ("cert", "renew"),
        ("cert", "revoke"),
        ("crl",),
        ("profile",),
        ("backup",),
        ("restore",),
    ],
)
def test_help_everywhere(run: Run, args: tuple[str, ...]) -> None:
    for flag in ("--help", "-h"):
        result = run(*args, flag)
        assert result.exit_code == 0, result.output
        assert "Usage:" in result.stdout


def test_a_garbled_ca_file_is_named_in_one_line(ready: Run, data_dir: Path) -> None:
    paths = DataPaths(data_dir)
    paths.ca_key.write_bytes(b"\x00\xffnot a key")
    _one_line_error(ready("cert", "issue", "alice"),
                    f"{paths.ca_key}: holds binary data, not text (it should hold the CA private")
    paths.ca_cert.write_text("-----BEGIN CERTIFICATE-----\nnonsense\n-----END CERTIFICATE-----\n")
    _one_line_error(ready("cert", "list"),
                    f"{paths.ca_cert}: is garbled (it should hold the CA certificate, a PEM ")
