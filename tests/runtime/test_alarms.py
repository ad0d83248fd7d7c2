"""Alarms end to end with real components: a data folder made by the real `sslvpn init`, a
real aiohttp server as the webhook receiver (it checks the HMAC itself), a real SMTP server
(aiosmtpd, STARTTLS required) as the mail relay; the evaluator is driven with tunnel states
as the IPsec service reports them and with the store's own expiry dates.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlmodel import select

from sslvpn.cli import main
from sslvpn.cli.alarms import refresh_crl_watched
from sslvpn.config import DataPaths
from sslvpn.runtime.alarms import (
    SIGNATURE_HEADER,
    Deliverer,
    Evaluator,
    Facts,
    alarm_metrics,
    alarm_round,
    run_alarms,
)
from sslvpn.runtime.control import TunnelStatus
from sslvpn.runtime.metrics import Metrics
from sslvpn.store import alarm_queries, db
from sslvpn.store.alarm_queries import ExpiringClient
from sslvpn.store.async_store import AsyncStore
from sslvpn.store.models import AlarmNotice, AuditEntry, SignedCrl
from tests.runtime import test_metrics
from tests.runtime.test_metrics import promtool_check, samples, scrape

SECRET = "a12-shared-secret"
ADMIN_MAIL = "ops@example.net"
OWNER_MAIL = "alice@example.net"


@dataclass
class Receiver:
    """A webhook receiver: records each body whose signature is right, answers 401 to one
    that is wrong, and 500 to the first ``fail_first`` requests."""

    bodies: list[dict[str, object]] = field(default_factory=list)
    refused: int = 0
    fail_first: int = 0
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        payload = await request.read()
        expected = "sha256=" + hmac.new(SECRET.encode(), payload, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get(SIGNATURE_HEADER, ""), expected):
            self.refused += 1
            return web.Response(status=401)
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.Response(status=500)
        self.bodies.append(json.loads(payload))
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/hook", found.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    found.url = str(server.make_url("/hook"))
    yield found
    await server.close()


@dataclass
class Mailbox:
    messages: list[Message] = field(default_factory=list)
    recipients: list[list[str]] = field(default_factory=list)
    tls: list[bool] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session,  # noqa: N802 - aiosmtpd's name
                          envelope: Envelope) -> str:
        self.tls.append(session.ssl is not None)
        self.recipients.append(list(envelope.rcpt_tos))
        assert isinstance(envelope.content, bytes)
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


def _localhost_certificate(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "smtp.crt", folder / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def mailbox(tmp_path: Path) -> Iterator[tuple[Mailbox, int, Path]]:
    """A real SMTP server on localhost that accepts mail only after STARTTLS."""
    cert, key = _localhost_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    box = Mailbox()
    port = _free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port, server_hostname="localhost",
                            tls_context=context, require_starttls=True)
    controller.start()
    yield box, port, cert
    controller.stop()


@pytest.fixture
def data(tmp_path: Path) -> Iterator[tuple[DataPaths, str]]:
    folder = tmp_path / "data"
    runner = CliRunner()
    for args in (["init", "--public-address", "198.18.0.1"],
                 ["user", "add", "root", "--admin", "--email", ADMIN_MAIL],
                 ["user", "add", "alice", "--email", OWNER_MAIL]):
        result = runner.invoke(main, ["--data-dir", str(folder), *args])
        assert result.exit_code == 0, result.output
    yield DataPaths(folder), f"sqlite:///{folder / 'sslvpn.db'}"


def cli(paths: DataPaths, *args: str, stdin: str | None = None) -> str:
    result = CliRunner().invoke(main, ["--data-dir", str(paths.data_dir), *args], input=stdin)
    assert result.exit_code == 0, result.output
    return result.output


def use_webhook(paths: DataPaths, receiver: Receiver) -> None:
    """The receiver as the webhook, with the shared secret; a tunnel down at once alarms."""
    cli(paths, "alarm", "set", "webhook.url", receiver.url)
    cli(paths, "alarm", "set", "webhook.secret", "-", stdin=SECRET + "\n")
    cli(paths, "alarm", "set", "ipsec-down.seconds", "0")


@pytest.fixture
async def store(data: tuple[DataPaths, str]) -> AsyncIterator[AsyncStore]:
    engine = db.open_engine(data[1])
    opened = AsyncStore(engine)
    yield opened
    await opened.close()
    engine.dispose()


def tunnel(state: str, error: str | None = None) -> TunnelStatus:
    return TunnelStatus(name="a12-hq", state=state, last_error=error, established_at=None,
                        spi_in=None, spi_out=None, bytes_in=0, bytes_out=0, packets_in=0,
                        packets_out=0)


async def tunnel_down() -> list[TunnelStatus]:
    return [tunnel("down")]


async def test_tunnel_down_is_posted_signed_once_raised_and_once_cleared(
        data: tuple[DataPaths, str], store: AsyncStore, receiver: Receiver) -> None:
    paths, _ = data
    use_webhook(paths, receiver)
    state = [tunnel("up")]

    async def tunnels() -> list[TunnelStatus]:
        return state

    evaluator, deliverer = Evaluator(), Deliverer(store)
    assert await alarm_round(store, paths, evaluator, tunnels=tunnels) == []
    state = [tunnel("down", "peer did not answer DPD")]
    for _ in range(3):  # still down: raised once
        await alarm_round(store, paths, evaluator, tunnels=tunnels)
        await deliverer.deliver_due()
    state = [tunnel("up")]
    for _ in range(3):
        await alarm_round(store, paths, evaluator, tunnels=tunnels)
        await deliverer.deliver_due()
    assert [(b["event"], b["alarm"]) for b in receiver.bodies] == [
        ("raised", "ipsec-down/a12-hq"), ("cleared", "ipsec-down/a12-hq")]
    assert receiver.refused == 0
    assert "peer did not answer DPD" in str(receiver.bodies[0]["message"])
    listed = json.loads(cli(paths, "alarm", "list", "--json"))
    assert listed["settings"]["webhook.secret"] == "(set)"  # never shown
    assert [(a["alarm"], a["state"]) for a in listed["alarms"]] == [
        ("ipsec-down/a12-hq", "cleared")]
    actions = await store.read(lambda s: [(e.action, e.target) for e in s.exec(
        select(AuditEntry).where(AuditEntry.action.startswith("alarm."))).all()])  # type: ignore[attr-defined]
    assert ("alarm.raised", "ipsec-down/a12-hq") in actions
    assert ("alarm.cleared", "ipsec-down/a12-hq") in actions
    assert ("alarm.set", "webhook.secret") in actions


async def test_a_failing_webhook_is_retried_with_back_off(
        data: tuple[DataPaths, str], store: AsyncStore, receiver: Receiver) -> None:
    paths, _ = data
    use_webhook(paths, receiver)

    receiver.fail_first = 2
    deliverer = Deliverer(store)
    await alarm_round(store, paths, Evaluator(), tunnels=tunnel_down)
    now = datetime.now(UTC)
    assert await deliverer.deliver_due(now) == 0  # 500: kept
    assert await deliverer.deliver_due(now + timedelta(seconds=1)) == 0  # not due yet
    assert await deliverer.deliver_due(now + timedelta(seconds=6)) == 0  # 500 again
    assert await deliverer.deliver_due(now + timedelta(seconds=12)) == 0  # backed off (10 s)
    assert await deliverer.deliver_due(now + timedelta(seconds=20)) == 1
    assert [b["event"] for b in receiver.bodies] == ["raised"]
    assert await deliverer.deliver_due(now + timedelta(hours=1)) == 0  # nothing owed


async def test_an_expiring_crl_sends_one_email_and_a_restart_sends_no_other(
        data: tuple[DataPaths, str], store: AsyncStore,
        mailbox: tuple[Mailbox, int, Path]) -> None:
    paths, url = data
    box, port, cafile = mailbox
    for key, value in (("smtp.host", "localhost"), ("smtp.port", str(port)),
                       ("smtp.cafile", str(cafile)), ("smtp.to", "noc@example.net")):
        cli(paths, "alarm", "set", key, value)
    evaluator = Evaluator()
    assert await alarm_round(store, paths, evaluator) == []  # a fresh CRL: nothing
    soon = datetime.now(UTC) + timedelta(hours=12)

    def expire(s: db.Session) -> None:
        crl = s.exec(select(SignedCrl)).one()
        crl.next_update = soon
        s.add(crl)

    await store.write(expire)
    assert await alarm_round(store, paths, evaluator) == [
        "certificate-expiry/crl_next_update/1d raised"]
    assert await Deliverer(store).deliver_due() == 1
    # a restart: a new evaluator, deliverer and store on the same database
    engine = db.open_engine(url)
    again = AsyncStore(engine)
    try:
        assert await alarm_round(again, paths, Evaluator()) == []
        assert await Deliverer(again).deliver_due() == 0
    finally:
        await again.close()
        engine.dispose()
    assert len(box.messages) == 1 and box.tls == [True]
    mail = box.messages[0]
    assert "the CRL expires within 1 day (" in mail["Subject"]
    assert mail["Date"] and mail["Message-ID"]
    assert sorted(box.recipients[0]) == sorted([ADMIN_MAIL, "noc@example.net"])
    owed = await store.read(lambda s: [n.pending for n in s.exec(select(AlarmNotice)).all()])
    assert owed == [[]]


async def test_a_client_certificate_about_to_expire_mails_its_owner_and_the_admins(
        data: tuple[DataPaths, str], store: AsyncStore,
        mailbox: tuple[Mailbox, int, Path]) -> None:
    paths, _ = data
    box, port, cafile = mailbox
    cli(paths, "cert", "issue", "alice", "--device", "laptop", "--days", "5")
    cli(paths, "cert", "issue", "alice", "--device", "phone", "--days", "60")
    for key, value in (("smtp.host", "localhost"), ("smtp.port", str(port)),
                       ("smtp.cafile", str(cafile))):
        cli(paths, "alarm", "set", key, value)
    changed = await alarm_round(store, paths, Evaluator())
    assert len(changed) == 1 and changed[0].startswith("client-certificate-expiry/")
    assert await Deliverer(store).deliver_due() == 1
    assert sorted(box.recipients[0]) == sorted([ADMIN_MAIL, OWNER_MAIL])
    assert "of alice expires" in box.messages[0]["Subject"]


async def test_alarm_test_reaches_each_channel(
        data: tuple[DataPaths, str], receiver: Receiver,
        mailbox: tuple[Mailbox, int, Path]) -> None:
    paths, _ = data
    box, port, cafile = mailbox
    for key, value in (("webhook.url", receiver.url), ("smtp.host", "localhost"),
                       ("smtp.port", str(port)), ("smtp.cafile", str(cafile))):
        cli(paths, "alarm", "set", key, value)
    cli(paths, "alarm", "set", "webhook.secret", "-", stdin=SECRET + "\n")
    output = await asyncio.to_thread(cli, paths, "alarm", "test")
    assert "webhook: sent" in output and "email: sent" in output
    assert [b["event"] for b in receiver.bodies] == ["test"]
    assert len(box.messages) == 1 and "[sslvpn] test" in box.messages[0]["Subject"]


@pytest.mark.parametrize(("key", "value", "why"), [
    ("smtp.password", "hunter2", "stdin"),  # a secret on the command line: seen in ps
    ("node-down.seconds", "half a minute", "must be a number"),
    ("evaluate.seconds", "0.1", "at least 1"),  # a round reads the store: no busy loop
    ("certificate-expiry.days", "30,seven", "must be days"),
    ("crl-resign.enabled", "maybe", "yes or no"),
    ("smtp.port", "70000", "port number"),
    ("webhook.url", "file:///etc/passwd", "http:// or https://"),
])
def test_alarm_set_refuses_what_the_rules_could_not_use(
        data: tuple[DataPaths, str], key: str, value: str, why: str) -> None:
    paths, _ = data
    result = CliRunner().invoke(main, ["--data-dir", str(paths.data_dir), "alarm", "set",
                                       key, value])
    assert result.exit_code != 0 and why in result.output
    shown = json.loads(cli(paths, "alarm", "list", "--json"))["settings"]
    assert shown[key] == alarm_queries.DEFAULTS[key][0]  # unchanged


def test_only_the_most_urgent_expiry_stage_is_raised() -> None:
    seen = Evaluator().evaluate(_facts(expiry={"ca": datetime.now(UTC) + timedelta(days=5)}),
                                0.0)
    assert set(seen.bad) == {"certificate-expiry/ca/7d"}
    assert seen.held == {"certificate-expiry/ca/30d"}


def test_a_failed_crl_re_signing_raises_an_alarm_and_a_good_one_clears_it(
        data: tuple[DataPaths, str]) -> None:
    paths, url = data
    engine = db.open_engine(url)
    with db.session(engine, write=True) as s:  # half its validity gone: re-signing is due
        crl = s.exec(select(SignedCrl)).one()
        crl.last_update = datetime.now(UTC) - timedelta(days=27)
        crl.next_update = datetime.now(UTC) + timedelta(days=3)
        s.add(crl)
    key = paths.ca_key.read_bytes()
    paths.ca_key.unlink()  # the CA key offline
    with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the CA's failure is
        refresh_crl_watched(paths, engine)
    with pytest.raises(Exception):  # noqa: B017, PT011 - still failing: no second alarm
        refresh_crl_watched(paths, engine)
    paths.ca_key.write_bytes(key)
    paths.ca_key.chmod(0o600)
    refresh_crl_watched(paths, engine)
    with db.session(engine, write=False) as s:
        notices = [(n.alarm_key, n.event) for n in s.exec(select(AlarmNotice)).all()]
    engine.dispose()
    assert notices == [("crl-resign/crl", "raised"), ("crl-resign/crl", "cleared")]


async def test_two_nodes_delivering_the_same_outbox_send_each_notice_once(
        data: tuple[DataPaths, str], store: AsyncStore, receiver: Receiver) -> None:
    paths, url = data
    use_webhook(paths, receiver)

    await alarm_round(store, paths, Evaluator(), tunnels=tunnel_down)
    engine = db.open_engine(url)
    other = AsyncStore(engine)  # another node's store on the same database
    try:
        delivered = await asyncio.gather(Deliverer(store).deliver_due(),
                                         Deliverer(other).deliver_due())
    finally:
        await other.close()
        engine.dispose()
    assert sorted(delivered) == [0, 1]
    assert [b["event"] for b in receiver.bodies] == ["raised"]


def _facts(**given: object) -> Facts:
    settings = {key: default for key, (default, _) in alarm_queries.DEFAULTS.items()}
    return Facts(settings=settings, now=datetime.now(UTC), **given)  # type: ignore[arg-type]


def test_a_node_is_down_once_its_heartbeat_is_older_than_the_limit() -> None:
    seen = Evaluator().evaluate(_facts(heartbeat_ages={"n1": 31.0, "n2": 3.0, "n3": None}),
                                0.0)
    assert set(seen.bad) == {"node-down/n1"} and seen.good == {"node-down/n2"}


def test_the_next_round_comes_after_the_evaluate_seconds_the_last_round_read() -> None:
    evaluator = Evaluator()
    assert evaluator.interval == 10.0  # before any round: the default
    evaluator.evaluate(replace(_facts(), settings={**_facts().settings,
                                                   "evaluate.seconds": "2.5"}), 0.0)
    assert evaluator.interval == 2.5


def test_refused_handshakes_alarm_above_the_rate_per_minute() -> None:
    evaluator = Evaluator("n1")
    assert not evaluator.evaluate(_facts(auth_failures=100), 0.0).bad  # a first sample
    calm = evaluator.evaluate(_facts(auth_failures=110), 60.0)  # 10 a minute
    assert calm.good == {"auth-failures/n1"} and not calm.bad
    storm = evaluator.evaluate(_facts(auth_failures=150), 90.0)  # 80 a minute
    assert set(storm.bad) == {"auth-failures/n1"}


def test_bandwidth_over_its_share_alarms_only_once_held_for_the_minutes() -> None:
    caps = {"a12-hq": ("vgw", 1_000_000)}  # 1 Mbit/s
    evaluator = Evaluator()

    def at(clock: float, total: int) -> tuple[set[str], set[str]]:
        status = replace(tunnel("up"), bytes_in=total)
        seen = evaluator.evaluate(_facts(tunnels=[status], caps=caps), clock)
        return ({k for k in seen.bad if k.startswith("bandwidth/")},
                {k for k in seen.good if k.startswith("bandwidth/")})

    at(0.0, 0)
    assert at(10.0, 1_500_000) == (set(), set())  # 120 %: the clock starts, no alarm yet
    fast = 0.95 * 1_000_000 / 8  # bytes a second at 95 %
    total, clock = 1_500_000.0, 10.0
    for _ in range(29):  # 290 s more at 95 %: not yet 5 minutes
        clock, total = clock + 10, total + fast * 10
        assert at(clock, int(total)) == (set(), set())
    clock, total = clock + 10, total + fast * 10
    assert at(clock, int(total)) == ({"bandwidth/vgw"}, set())
    assert at(clock + 10, int(total + 1000)) == (set(), {"bandwidth/vgw"})


class _BrokenStore:
    """A store whose every call fails (a bug, not the store's answer); counts the calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def read(self, work: object) -> object:
        self.calls += 1
        raise RuntimeError("a12: broken")

    write = read


async def test_a_failing_round_is_logged_once_and_never_ends_the_task(
        data: tuple[DataPaths, str], caplog: pytest.LogCaptureFixture) -> None:
    broken = _BrokenStore()
    task = asyncio.create_task(run_alarms(broken, data[0],  # type: ignore[arg-type]
                                          interval=0.01))
    async with asyncio.timeout(10):
        while broken.calls < 3:  # three rounds
            await asyncio.sleep(0.01)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [r.getMessage() for r in caplog.records] == ["alarms not evaluated: a12: broken"]


def test_a_client_certificate_expired_before_the_first_look_is_never_raised_late() -> None:
    now = datetime.now(UTC)
    old = ExpiringClient("0a", "bob", None, now - timedelta(days=90))
    soon = ExpiringClient("0b", "bob", "bob@example.net", now + timedelta(days=2))
    seen = Evaluator().evaluate(_facts(expiring_clients=[old, soon]), 0.0)
    assert set(seen.bad) == {"client-certificate-expiry/0b"}
    assert seen.bad["client-certificate-expiry/0b"][3] == ["bob@example.net"]
    assert seen.held == {"client-certificate-expiry/0a"}  # a raised one stays raised


async def test_metrics_show_the_alarms_raised_by_rule(
        data: tuple[DataPaths, str], store: AsyncStore) -> None:
    paths, _ = data
    cli(paths, "alarm", "set", "ipsec-down.seconds", "0")
    await alarm_round(store, paths, Evaluator(), tunnels=tunnel_down)
    metrics = Metrics(store=store)
    metrics.add_store_source(alarm_metrics)
    text = await scrape(metrics)
    promtool_check(text)
    found = samples(text)
    assert test_metrics.value(found, "sslvpn_alarms_raised", rule="ipsec-down") == 1
    assert test_metrics.value(found, "sslvpn_alarms_raised", rule="node-down") == 0
