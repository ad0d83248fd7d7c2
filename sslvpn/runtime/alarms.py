"""Alarms: a periodic task that reads the gateway's state, decides which alarms hold, and
delivers what changed by webhook and e-mail.

It runs where the node's periodic work runs (the gateway's loop for a single process, the
supervisor's with workers), never per packet: each round reads the store in a store thread
(``AsyncStore``), the tunnels and handshake counters through callables the composition root
hands it, and asks `alarm_queries.observe` to raise or clear, which writes the change, its
audit entry and its notice in one transaction. Delivery reads the notices owed (an outbox),
so an alarm is notified once when raised and once when cleared, across restarts; a channel
that fails is tried again with back-off. A webhook is a JSON POST whose body is signed with
HMAC-SHA256 (``X-Sslvpn-Signature: sha256=<hex>``); e-mail goes over SMTP with STARTTLS.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import hashlib
import hmac
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import aiosmtplib
from cryptography import x509
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from sslvpn.config import DataPaths
from sslvpn.runtime.control import TunnelStatus
from sslvpn.store import StoreError, alarm_queries, metrics_queries
from sslvpn.store.alarm_queries import ExpiringClient, Observation
from sslvpn.store.async_store import AsyncStore

if TYPE_CHECKING:  # the type of what a store thread hands us, never opened here
    from sqlmodel import Session

log = logging.getLogger(__name__)

SEND_TIMEOUT = 10.0  # seconds one webhook POST or one e-mail may take
CLAIM_SECONDS = 120.0  # a notice taken for delivery is not taken again before this
GIVE_UP_AFTER = 12  # delivery rounds before a notice is dropped (logged)
SIGNATURE_HEADER = "X-Sslvpn-Signature"

# None: not known this round (the workers being started): those rules wait for the next
Tunnels = Callable[[], Awaitable[list[TunnelStatus] | None]]
Counter = Callable[[], Awaitable[int | None]]


@dataclass
class Facts:
    """What one round read: the settings and the state the rules look at."""

    settings: dict[str, str]
    now: datetime
    expiry: dict[str, datetime] = field(default_factory=dict)  # ca, server, crl_next_update
    heartbeat_ages: dict[str, float | None] = field(default_factory=dict)
    expiring_clients: list[ExpiringClient] = field(default_factory=list)
    caps: dict[str, tuple[str, int]] = field(default_factory=dict)  # tunnel -> gateway, bps
    tunnels: list[TunnelStatus] | None = None  # None: this process has no IPsec service
    auth_failures: int | None = None  # handshakes refused so far (a running total)


def read_facts(paths: DataPaths) -> Callable[[Session], Facts]:
    """The store's part of a round (run in a store thread): settings, expiry, heartbeats,
    the client certificates about to expire, the VPN gateways' caps."""

    def read(s: Session) -> Facts:
        settings = alarm_queries.alarm_settings(s)
        now = datetime.now(UTC)
        days = _days(settings["client-certificate-expiry.days"])
        facts = Facts(settings=settings, now=now,
                      expiry=metrics_queries.expiry_times(s),
                      heartbeat_ages=metrics_queries.heartbeat_ages(s),
                      expiring_clients=alarm_queries.expiring_clients(
                          s, before=now + timedelta(days=max(days, default=0))),
                      caps=alarm_queries.tunnel_caps(s))
        for kind, path in (("ca", paths.ca_cert), ("server", paths.server_cert)):
            not_after = _not_after(path)
            if not_after is not None:
                facts.expiry[kind] = not_after
        facts.expiry.pop("earliest_client", None)  # client certificates have a rule of their own
        return facts

    return read


def alarm_metrics(s: Session) -> list[Metric]:
    """A store source for ``/metrics``: the alarms raised now, by rule (every rule listed,
    0 when none), so a Prometheus setup can alert on the same conditions."""
    raised = GaugeMetricFamily("sslvpn_alarms_raised", "Alarms raised now, by rule.",
                               labels=["rule"])
    counts = alarm_queries.raised_by_rule(s)
    for rule in alarm_queries.RULES:
        raised.add_metric([rule], counts.get(rule, 0))
    return [raised]


def _not_after(path: Path) -> datetime | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc
    except (OSError, ValueError):
        return None


def _days(text: str) -> list[int]:
    return sorted({int(part) for part in text.replace(" ", "").split(",") if part.isdigit()},
                  reverse=True)


def _number(settings: dict[str, str], key: str) -> float:
    try:
        return float(settings[key])
    except ValueError:  # a bad stored value falls back to the default
        return float(alarm_queries.DEFAULTS[key][0])


class Evaluator:
    """The rules: facts in, an `Observation` out. It remembers, in memory, since when each
    tunnel is down and each gateway's traffic is over its share, and the last counters (a
    restart starts those clocks again; raised alarms stay raised in the store)."""

    def __init__(self, node: str = "default") -> None:
        self.node = node
        # seconds to the next round: the ``evaluate.seconds`` setting as the last round read it
        self.interval = float(alarm_queries.DEFAULTS["evaluate.seconds"][0])
        self._down_since: dict[str, float] = {}
        self._over_since: dict[str, float] = {}
        self._last_bytes: dict[str, tuple[float, int]] = {}
        self._last_auth: tuple[float, int] | None = None

    def evaluate(self, facts: Facts, clock: float) -> Observation:
        self.interval = max(_number(facts.settings, "evaluate.seconds"),
                            alarm_queries.MIN_EVALUATE_SECONDS)
        seen = Observation(scopes=("certificate-expiry/", "client-certificate-expiry/"))
        self._expiry(facts, seen)
        self._nodes(facts, seen)
        if facts.tunnels is not None:
            self._tunnels(facts, clock, seen)
            self._bandwidth(facts, clock, seen)
        if facts.auth_failures is not None:
            self._auth(facts, clock, seen)
        return seen

    def _expiry(self, facts: Facts, seen: Observation) -> None:
        names = {"ca": "the CA certificate", "server": "the server certificate",
                 "crl_next_update": "the CRL"}
        for kind, at in facts.expiry.items():
            stages = "crl-expiry.days" if kind == "crl_next_update" else "certificate-expiry.days"
            crossed = [days for days in _days(facts.settings[stages])
                       if at - facts.now < timedelta(days=days)]
            if not crossed:
                continue
            days = crossed[-1]  # only the most urgent stage is notified
            seen.held.update(f"certificate-expiry/{kind}/{d}d" for d in crossed[:-1])
            seen.bad[f"certificate-expiry/{kind}/{days}d"] = (
                "certificate-expiry", kind, f"{names.get(kind, kind)} expires within "
                f"{days} day{'s' if days != 1 else ''} ({at:%Y-%m-%d %H:%M} UTC)", [])
        for client in facts.expiring_clients:
            key = f"client-certificate-expiry/{client.serial}"
            if client.not_after <= facts.now:  # expired before we looked: raised if it was,
                seen.held.add(key)  # never raised late (no flood from an old install)
                continue
            seen.bad[key] = (
                "client-certificate-expiry", client.serial,
                f"client certificate {client.serial} of {client.owner or 'no owner'} "
                f"expires {client.not_after:%Y-%m-%d %H:%M} UTC",
                [client.owner_email] if client.owner_email else [])

    def _nodes(self, facts: Facts, seen: Observation) -> None:
        limit = _number(facts.settings, "node-down.seconds")
        for node, age in facts.heartbeat_ages.items():
            if age is None:
                continue
            key = f"node-down/{node}"
            if age > limit:
                seen.bad[key] = ("node-down", node,
                                 f"node {node} sent no heartbeat for {age:.0f} s", [])
            else:
                seen.good.add(key)

    def _tunnels(self, facts: Facts, clock: float, seen: Observation) -> None:
        limit = _number(facts.settings, "ipsec-down.seconds")
        for tunnel in facts.tunnels or ():
            key = f"ipsec-down/{tunnel.name}"
            if tunnel.state == "up":
                self._down_since.pop(tunnel.name, None)
                seen.good.add(key)
                continue
            since = self._down_since.setdefault(tunnel.name, clock)
            if clock - since >= limit:
                why = f" ({tunnel.last_error})" if tunnel.last_error else ""
                seen.bad[key] = ("ipsec-down", tunnel.name,
                                 f"IPsec tunnel {tunnel.name} down for {clock - since:.0f} s"
                                 f"{why}", [])

    def _bandwidth(self, facts: Facts, clock: float, seen: Observation) -> None:
        share = _number(facts.settings, "bandwidth.percent") / 100
        hold = _number(facts.settings, "bandwidth.minutes") * 60
        rates: dict[str, float] = {}
        for tunnel in facts.tunnels or ():
            total = tunnel.bytes_in + tunnel.bytes_out
            last = self._last_bytes.get(tunnel.name)
            self._last_bytes[tunnel.name] = (clock, total)
            if tunnel.name in facts.caps and last is not None and clock > last[0]:
                gateway = facts.caps[tunnel.name][0]
                rate = max(total - last[1], 0) * 8 / (clock - last[0])
                rates[gateway] = rates.get(gateway, 0.0) + rate
        caps = {gateway: bps for gateway, bps in facts.caps.values()}
        for gateway, rate in rates.items():
            key = f"bandwidth/{gateway}"
            if rate <= share * caps[gateway]:
                self._over_since.pop(gateway, None)
                seen.good.add(key)
            elif clock - self._over_since.setdefault(gateway, clock) >= hold:
                seen.bad[key] = ("bandwidth", gateway,
                                 f"VPN gateway {gateway} at {rate / caps[gateway]:.0%} of its "
                                 f"bandwidth cap for {hold / 60:g} minutes", [])

    def _auth(self, facts: Facts, clock: float, seen: Observation) -> None:
        total = facts.auth_failures or 0
        last, self._last_auth = self._last_auth, (clock, total)
        if last is None or clock <= last[0]:
            return
        per_minute = max(total - last[1], 0) * 60 / (clock - last[0])
        key = f"auth-failures/{self.node}"
        if per_minute > _number(facts.settings, "auth-failures.per-minute"):
            seen.bad[key] = ("auth-failures", self.node,
                             f"{per_minute:.0f} failed handshakes a minute on {self.node}", [])
        else:
            seen.good.add(key)


class Deliverer:
    """Sends the notices owed: each channel of each notice once it succeeds, again with
    back-off while it fails."""

    def __init__(self, store: AsyncStore) -> None:
        self.store = store

    async def deliver_due(self, now: datetime | None = None) -> int:
        """One delivery round (of the notices due at ``now``); returns the notices fully
        delivered."""
        now = now or datetime.now(UTC)
        notices = await self.store.read(lambda s: (alarm_queries.due_notices(s, now=now),
                                                   alarm_queries.alarm_settings(s),
                                                   alarm_queries.admin_emails(s)))
        due, settings, admins = notices
        done = 0
        for notice in due:
            claimed = await self.store.write(functools.partial(
                alarm_queries.claim_notice, notice_id=notice.id or 0, now=now,
                until=now + timedelta(seconds=CLAIM_SECONDS)))
            if not claimed:  # another node of the fleet delivers it
                continue
            reached = []
            for channel in notice.pending:
                try:
                    await self.send(channel, notice.body, settings,
                                    [*listed(settings["smtp.to"]), *admins,
                                     *notice.recipients])
                except Exception as exc:  # noqa: BLE001 - a bad channel must not stop the rest
                    log.warning("alarm %s (%s) not delivered by %s (attempt %d): %s",
                                notice.alarm_key, notice.event, channel, notice.attempts + 1,
                                exc)
                else:
                    reached.append(channel)
            notice_id = notice.id or 0
            backoff = timedelta(seconds=min(5 * 2 ** notice.attempts, 900))
            row = await self.store.write(functools.partial(
                alarm_queries.notice_tried, notice_id=notice_id, reached=reached,
                backoff=backoff, give_up_after=GIVE_UP_AFTER, now=now))
            if row is not None and not row.pending:
                done += 1
                if len(reached) < len(notice.pending):
                    log.error("alarm %s (%s) dropped after %d attempts", notice.alarm_key,
                              notice.event, row.attempts)
        return done

    @staticmethod
    async def send(channel: str, body: dict[str, object], settings: dict[str, str],
                   to: list[str]) -> None:
        if channel == "webhook":
            await send_webhook(settings["webhook.url"], settings["webhook.secret"], body)
        elif channel == "email":
            await send_email(settings, sorted(set(to)), body)


def listed(text: str) -> list[str]:
    """The addresses of a comma-separated list."""
    return [part.strip() for part in text.split(",") if part.strip()]


def signature(secret: str, payload: bytes) -> str:
    """The webhook header's value: ``sha256=`` and the HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


async def send_webhook(url: str, secret: str, body: dict[str, object]) -> None:
    """POST ``body`` as JSON, signed; anything but a 2xx answer is a failure."""
    payload = json.dumps(body, sort_keys=True).encode()
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature(secret, payload)}
    timeout = aiohttp.ClientTimeout(total=SEND_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as client, client.post(
            url, data=payload, headers=headers) as answer:
        answer.raise_for_status()


async def send_email(settings: dict[str, str], to: list[str], body: dict[str, object]) -> None:
    """One e-mail to ``to`` over SMTP, upgraded with STARTTLS (verified against the system's
    CAs, or ``smtp.cafile``)."""
    if not to:
        raise ValueError("no recipients: set smtp.to or give an admin an e-mail address")
    message = EmailMessage()
    message["From"] = settings["smtp.from"]
    message["To"] = ", ".join(to)
    message["Subject"] = f"[sslvpn] {body['event']}: {body['message']}"
    message["Date"] = email.utils.formatdate(localtime=False)
    message["Message-ID"] = email.utils.make_msgid(domain="sslvpn")
    message.set_content("\n".join(f"{key}: {value}" for key, value in sorted(body.items())))
    # loading the CA certificates takes milliseconds: not on the loop that may carry packets
    context = await asyncio.to_thread(ssl.create_default_context,
                                      cafile=settings["smtp.cafile"] or None)
    await aiosmtplib.send(
        message, hostname=settings["smtp.host"], port=int(settings["smtp.port"]),
        start_tls=True, tls_context=context, timeout=SEND_TIMEOUT,
        username=settings["smtp.username"] or None, password=settings["smtp.password"] or None)


async def run_alarms(store: AsyncStore, paths: DataPaths, *, node: str = "default",
                     tunnels: Tunnels | None = None, auth_failures: Counter | None = None,
                     interval: float | None = None) -> None:
    """The periodic task: evaluate and deliver every ``evaluate.seconds`` (read each round;
    ``interval`` overrides it). A failing round (the store away) is logged once per change,
    and the next round tries again."""
    evaluator = Evaluator(node)
    deliverer = Deliverer(store)
    failing: str | None = None
    while True:
        try:
            await alarm_round(store, paths, evaluator, tunnels=tunnels,
                              auth_failures=auth_failures)
            await deliverer.deliver_due()
        except Exception as exc:  # a bug too: the gateway goes on, the log says it
            if str(exc) != failing:
                known = isinstance(exc, StoreError | OSError)
                log.error("alarms not evaluated: %s", exc, exc_info=not known)
            failing = str(exc)
        else:
            failing = None
        await asyncio.sleep(evaluator.interval if interval is None else interval)


async def alarm_round(store: AsyncStore, paths: DataPaths, evaluator: Evaluator, *,
                      tunnels: Tunnels | None = None,
                      auth_failures: Counter | None = None) -> list[str]:
    """One evaluation: read, decide, store the changes; returns them as ``key event``."""
    facts = await store.read(read_facts(paths))
    facts.tunnels = None if tunnels is None else await tunnels()
    facts.auth_failures = None if auth_failures is None else await auth_failures()
    seen = evaluator.evaluate(facts, time.monotonic())
    changed = await store.write(lambda s: alarm_queries.observe(s, seen, now=facts.now))
    shown = [f"{row.key} {'cleared' if row.cleared_at else 'raised'}" for row in changed]
    for row in changed:
        log.warning("alarm %s: %s", "cleared" if row.cleared_at else "raised", row.message,
                    extra={"event": "alarm", "alarm": row.key})
    return shown
