"""GatewayControl: the one small interface the portal and CLI use to talk to a running gateway.

Implemented in-process by the runtime's gateway and, for a portal or CLI in another process,
by a client of the gateway's local control socket. A portal in the gateway's process runs on
a loop of its own and reaches the gateway through `ThreadSafeControl`.
"""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
TOP_SOURCES = 10  # refused source addresses a listener status reports
CALL_TIMEOUT = 2.0  # seconds another thread waits for the gateway's loop to answer


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    user: str
    certificate_serial: str
    device: str
    real_address: str  # "ip:port" as seen by the gateway
    vpn_address: str
    protocol: str  # "udp" | "tcp"
    connected_at: datetime
    last_activity: datetime | None  # None: known only to the node holding the session
    bytes_in: int  # from the client into the VPC
    bytes_out: int  # from the VPC to the client
    tls_group: str | None = None  # the control channel's key exchange, e.g. X25519MLKEM768
    node: str | None = None  # the fleet node holding it (None: the single implicit node)
    # what the client said it is (peer-info IV_VER, IV_PLAT + IV_PLAT_VER, IV_GUI_VER)
    client_version: str | None = None
    client_platform: str | None = None
    client_gui: str | None = None


_VERSION = re.compile(r"(\d{1,4})(?:\.(\d{1,4}))?(?:\.(\d{1,4}))?")


def version_key(text: str | None) -> tuple[int, int, int] | None:
    """The numeric release of an IV_VER ("2.4.12", "2.6_git", "3.12_git:master"), or None."""
    found = _VERSION.match(text or "")
    return None if found is None else _key(found)


def older_clients(sessions: list[SessionInfo], older: str | None) -> list[SessionInfo]:
    """The sessions whose client is older than version ``older`` (all when it is None);
    ValueError when it is not a version."""
    if older is None:
        return sessions
    threshold = parse_threshold(older)
    return [s for s in sessions if older_than(s, threshold)]


def older_than(session: SessionInfo, version: tuple[int, int, int]) -> bool:
    """The session's client is older than ``version``, or said no version it can be judged
    by (a client that hides its version cannot be counted on when retiring old ones)."""
    key = version_key(session.client_version)
    return key is None or key < version


def client_summary(session: SessionInfo) -> str:
    """One short text for tables: "2.4.12 linux (OCmacOS_3.4.4)", "-" when nothing was said."""
    text = " ".join(p for p in (session.client_version, session.client_platform) if p)
    if session.client_gui:
        text = f"{text} ({session.client_gui})".strip()
    return text or "-"


def parse_threshold(text: str) -> tuple[int, int, int]:
    """A version given by an admin ("2.6", "2.5.11"); ValueError when it is none."""
    found = _VERSION.fullmatch(text.strip())
    if found is None:
        raise ValueError(f"{text!r} is not a version such as 2.6 or 2.5.11")
    return _key(found)


def _key(found: re.Match[str]) -> tuple[int, int, int]:
    major, minor, patch = (int(part or 0) for part in found.groups())
    return major, minor, patch


@dataclass(frozen=True)
class TrafficSample:
    at: datetime
    bytes_in: int  # totals since the gateway started
    bytes_out: int


@dataclass(frozen=True)
class TunnelStatus:
    name: str
    state: str  # "down" | "connecting" | "up"
    last_error: str | None
    established_at: datetime | None
    spi_in: str | None
    spi_out: str | None
    bytes_in: int
    bytes_out: int
    packets_in: int
    packets_out: int
    # what the peer's address sent that was not admitted (attacks show up here)
    ike_half_open: int = 0  # unauthenticated responder SAs now
    ike_half_open_peak: int = 0
    ike_inits_admitted: int = 0  # IKE_SA_INIT requests answered in full (one DH each)
    ike_drops: dict[str, int] = field(default_factory=dict)  # dropped IKE messages by reason
    ike_drop_sources: dict[str, int] = field(default_factory=dict)  # top "ip:port" sources
    # its ESP and packets dropped (bad ICV, replay, policy, bandwidth, no SA ...): sources
    # are "ip:port" of ESP, or the inner source address of a packet going out
    esp_drops: dict[str, int] = field(default_factory=dict)
    esp_drop_sources: dict[str, int] = field(default_factory=dict)
    # the whole gateway's drops, those of no tunnel too (unknown SPI, no policy, IKE from
    # unknown peers; IKE reasons prefixed "ike-"), the same in every tunnel's row
    gateway_drops: dict[str, int] = field(default_factory=dict)
    gateway_drop_sources: dict[str, int] = field(default_factory=dict)
    # completed rekeys, "ike" and "child", and "ike-collision" (settled by the lowest nonce)
    rekeys: dict[str, int] = field(default_factory=dict)
    ike_sas: int = 0  # IKE SAs of the live one: 1, more while a rekey's old one goes
    node: str | None = None  # the fleet node carrying it (None: the single gateway)
    settings: dict[str, Any] = field(default_factory=dict)  # start action and timers in force
    # seconds until the IKE SA / current CHILD_SA rekeys, and until that CHILD_SA expires
    ike_rekey_in: float | None = None
    child_rekey_in: float | None = None
    child_expires_in: float | None = None
    # the negotiated suites in strongSwan notation, e.g. aes256-sha256-modp2048 / aes256gcm16
    ike_proposal: str | None = None
    esp_proposal: str | None = None


@dataclass(frozen=True)
class GatewayCounters:
    """One pass over a gateway's registry for a metrics scrape: totals since start, live
    sessions."""

    sessions: dict[str, int]  # admitted sessions by protocol
    bytes_in: int
    bytes_out: int
    packets_in: int
    packets_out: int
    handshakes: dict[str, int]
    drops: dict[str, int]  # the gateway's and its sessions' cores' drops, by reason
    store_write_queue: int = 0  # accounting records not written yet
    # packets an access rule decided, by "<rule id or default>/<allow or deny>"
    access_hits: dict[str, int] = field(default_factory=dict)


def _added(items: Sequence[object], name: str) -> dict[str, int]:
    """The counts by key of attribute ``name`` of every item, added up."""
    added: collections.Counter[str] = collections.Counter()
    for item in items:
        added.update(getattr(item, name))
    return dict(added)


def summed(counters: list[GatewayCounters]) -> GatewayCounters:
    """Several processes' counters (the workers of one node) as one gateway's."""
    def total(name: str) -> dict[str, int]:
        return _added(counters, name)

    def plain(name: str) -> int:
        return sum(int(getattr(one, name)) for one in counters)

    return GatewayCounters(
        sessions=total("sessions"), bytes_in=plain("bytes_in"), bytes_out=plain("bytes_out"),
        packets_in=plain("packets_in"), packets_out=plain("packets_out"),
        handshakes=total("handshakes"), drops=total("drops"),
        store_write_queue=plain("store_write_queue"), access_hits=total("access_hits"))


@dataclass(frozen=True)
class ListenerStatus:
    """The OpenVPN listeners of one gateway process: clients held, refused, limits."""

    clients: int = 0  # UDP sessions and TCP connections held
    # clients that have not authenticated yet (no admitted session), by "udp" / "tcp"
    half_open: dict[str, int] = field(default_factory=dict)
    half_open_peak: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)  # new clients refused, by reason
    top_refused_sources: dict[str, int] = field(default_factory=dict)  # host -> refusals
    limits: dict[str, int] = field(default_factory=dict)  # the caps in force


def combined(statuses: list[ListenerStatus]) -> ListenerStatus:
    """Several processes' listeners (the workers of one node) as one."""
    def total(name: str) -> dict[str, int]:
        return _added(statuses, name)

    top = collections.Counter(total("top_refused_sources")).most_common(TOP_SOURCES)
    return ListenerStatus(
        clients=sum(s.clients for s in statuses),
        half_open=total("half_open"),
        half_open_peak=total("half_open_peak"),  # each worker's peak: an upper bound
        refused=total("refused"),
        top_refused_sources=dict(top),
        # each worker enforces its share of max-clients; the other caps hold per worker
        limits={**statuses[0].limits, "max_clients": sum(
            s.limits.get("max_clients", 0) for s in statuses)} if statuses else {},
    )


TUNNEL_ACTIONS = ("rekey-ike", "rekey-child", "restart", "down")


class GatewayControl(Protocol):
    def list_sessions(self) -> list[SessionInfo]: ...

    def kick(self, session_id: str, reason: str = "kicked by admin") -> bool: ...

    def kick_certificate(self, serial: str, reason: str = "certificate revoked") -> int: ...

    def traffic(self) -> TrafficSample: ...

    def tunnel_status(self) -> list[TunnelStatus]: ...

    def listener_status(self) -> ListenerStatus: ...

    def access_hits(self) -> list[tuple[str, bool, int]]:
        """(rule id or "default", allowed, packets) for every access rule seen so far."""
        ...

    def tunnel_action(self, name: str, action: str) -> str:
        """One of TUNNEL_ACTIONS on a running tunnel; what was done, or ValueError why not."""
        ...


class ThreadSafeControl:
    """A GatewayControl for another thread (the portal's own loop): each call runs on the
    gateway's loop, between two packets' callbacks, and the caller waits for it at most
    ``timeout`` seconds. Calls from the gateway's loop itself run at once."""

    def __init__(self, control: GatewayControl, loop: asyncio.AbstractEventLoop,
                 timeout: float = CALL_TIMEOUT) -> None:
        self._control = control
        self._loop = loop
        self._timeout = timeout

    def list_sessions(self) -> list[SessionInfo]:
        return self._on_loop(self._control.list_sessions)

    def kick(self, session_id: str, reason: str = "kicked by admin") -> bool:
        return self._on_loop(lambda: self._control.kick(session_id, reason))

    def kick_certificate(self, serial: str, reason: str = "certificate revoked") -> int:
        return self._on_loop(lambda: self._control.kick_certificate(serial, reason))

    def traffic(self) -> TrafficSample:
        return self._on_loop(self._control.traffic)

    def tunnel_status(self) -> list[TunnelStatus]:
        return self._on_loop(self._control.tunnel_status)

    def listener_status(self) -> ListenerStatus:
        return self._on_loop(self._control.listener_status)

    def access_hits(self) -> list[tuple[str, bool, int]]:
        return self._on_loop(self._control.access_hits)

    def tunnel_action(self, name: str, action: str) -> str:
        return self._on_loop(lambda: self._control.tunnel_action(name, action))

    def _on_loop(self, call: Callable[[], T]) -> T:
        """``call()`` on the gateway's loop; TimeoutError when it does not get there in time."""
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            return call()
        done = schedule_on_loop(self._loop, call)
        try:
            return done.result(self._timeout)
        finally:
            done.cancel()  # not run yet: it never will be


def schedule_on_loop(loop: asyncio.AbstractEventLoop, call: Callable[[], T]) -> Future[T]:
    """``call()`` run on ``loop`` (from another thread), its outcome in the future returned;
    cancelling that future before the call started means it never will."""
    done: Future[T] = Future()

    def run() -> None:
        if done.set_running_or_notify_cancel():
            try:
                done.set_result(call())
            except BaseException as exc:
                done.set_exception(exc)

    loop.call_soon_threadsafe(run)
    return done
