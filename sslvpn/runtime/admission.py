"""Who may hold state on the OpenVPN listeners: client caps, half-open budgets, refusals.

Every client holds one ``Slot`` from the moment it costs the gateway something (a UDP
session created after the cookie exchange, a TCP connection accepted) until it is gone.
A slot is *half-open* until its session was admitted (certificate checked, address
handed out). Admission refuses a new slot cleanly when:

* the gateway holds ``max_clients`` slots, or the source address holds
  ``max_clients_per_address`` (OpenVPN's ``max-clients``; 0 means no cap);
* the source address already holds ``half_open_per_address`` half-open slots: what one
  address may keep waiting without authenticating (a flood from one host stops there
  and costs an accept and a close per connection);
* ``half_open_max`` half-open slots are held in all: then the oldest half-open slot of the
  address holding the most is evicted for the newcomer, so a flood from a few addresses
  never locks out another address's client; only when the newcomer's address already holds
  as many as any other is it refused.

A source is an IPv4 address or an IPv6 /64 (one host or household usually holds a whole
/64, so counting single IPv6 addresses would give one attacker billions of budgets).
Refusals are counted by reason and by source (the top ones are shown by
``sslvpn sessions --json``, the portal and the metrics), and logged at most once per
``LOG_INTERVAL`` per reason, with the count and the limit, so a flood cannot fill the log.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass

from sslvpn.runtime.control import TOP_SOURCES, ListenerStatus

log = logging.getLogger(__name__)

HALF_OPEN_PER_ADDRESS = 16  # half-open clients one source address may hold
HALF_OPEN_MAX = 1024  # half-open clients in all (2.6's max-clients default, as a scale)
LOG_INTERVAL = 10.0  # seconds between two log lines about the same refusal reason
_SOURCES_KEPT = 4096  # refused source addresses remembered before the rarest are forgotten
PROTOCOLS = ("udp", "tcp")
OUT_OF_DESCRIPTORS = "out-of-descriptors"
BASE_DESCRIPTORS = 256  # TUN, listeners, store, portal, control socket, logs, headroom

#: Why a limit refuses, for the log line (the key is the counted reason).
_EXPLAIN = {
    "max-clients": "the gateway holds max-clients ({max_clients}) clients",
    "max-clients-per-address": "the address holds max-clients-per-address "
                               "({max_clients_per_address}) clients",
    "half-open-per-address": "the address holds {half_open_per_address} clients that have "
                             "not authenticated",
    "half-open-max": "{half_open_max} clients have not authenticated and the address holds "
                     "as many as any other",
    "evicted": "{half_open_max} clients had not authenticated: the oldest of the address "
               "holding the most was dropped for a newcomer",
    "no-cookie-support": "a tls-crypt-v2 client without early negotiation (OpenVPN 2.5) over "
                         "UDP, refused by force-cookie (`init --no-tls-crypt-v2-force-cookie` "
                         "or the settings page admits it)",
    "rate-limited": "more new UDP clients than connect-freq-initial allows (serve "
                    "--connect-freq-initial)",
}


def source_of(address: str) -> str:
    """The admission source of a peer address: itself (IPv4) or its /64 (IPv6)."""
    if ":" not in address:
        return address
    try:
        return str(ipaddress.IPv6Network((address.split("%")[0], 64), strict=False))
    except ValueError:  # not an address (a test's stand-in): itself
        return address


def descriptors_needed(clients: int) -> int:
    """File descriptors a process needs to hold ``clients`` (one per TCP connection or
    floated UDP session of a worker) and its own."""
    return clients + BASE_DESCRIPTORS


def raise_descriptor_limit(capacity: int) -> int:
    """Lift the soft open-file limit to the hard one (a service manager's usual soft 1,024
    would cap the gateway near a thousand clients) and say so; warn when even the hard
    limit is below what ``capacity`` clients need. Returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    needed = descriptors_needed(capacity)
    log.info("open-file limit %d (soft limit was %d, hard %d); %d clients need %d",
             now, soft, hard, capacity, needed)
    if now < needed:
        log.warning("the open-file limit %d is below the %d descriptors %d clients need: "
                    "raise the hard limit (LimitNOFILE=%d in the service unit, or ulimit -Hn) "
                    "or lower max-clients", now, needed, capacity, needed)
    return now


@dataclass(frozen=True)
class AdmissionLimits:
    """The caps in force (0 for a max-clients setting: no cap)."""

    max_clients: int = 0
    max_clients_per_address: int = 0
    half_open_per_address: int = HALF_OPEN_PER_ADDRESS
    half_open_max: int = HALF_OPEN_MAX


class Slot:
    """One client's place; ``evict`` ends the client when admission needs its place."""

    __slots__ = ("host", "protocol", "half_open", "released", "evict", "_admission")

    def __init__(self, admission: Admission, host: str, protocol: str,
                 evict: Callable[[], None]) -> None:
        self._admission = admission
        self.host = host
        self.protocol = protocol
        self.half_open = True
        self.released = False
        self.evict = evict

    def authenticated(self) -> None:
        """The client's session was admitted: it leaves the half-open budgets."""
        if self.half_open and not self.released:
            self._admission._leave_half_open(self)

    def release(self) -> None:
        """The client is gone (idempotent)."""
        if not self.released:
            self._admission._release(self)


class Admission:
    """The slots of one gateway process, shared by all its OpenVPN listeners."""

    def __init__(self, limits: AdmissionLimits = AdmissionLimits(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self.clients = 0
        self._by_host: collections.Counter[str] = collections.Counter()
        self._half_open: dict[str, dict[Slot, None]] = {}  # host -> its half-open, oldest first
        self.half_open = dict.fromkeys(PROTOCOLS, 0)
        self.half_open_peak = dict.fromkeys(PROTOCOLS, 0)
        self.refused: collections.Counter[str] = collections.Counter()
        self.refused_sources: collections.Counter[str] = collections.Counter()
        self._unlogged: collections.Counter[str] = collections.Counter()
        self._logged_at: dict[str, float] = {}
        self._said_out_of_descriptors = False

    def take(self, host: str, protocol: str, evict: Callable[[], None]) -> Slot | None:
        """A half-open slot for a new client from ``host``, or None (refused, counted)."""
        reason = self._over_limit(host)
        if reason is None and not self._room_for_half_open(host):
            reason = "half-open-max"
        if reason is not None:
            self.refuse(reason, host)
            return None
        slot = Slot(self, host, protocol, evict)
        self.clients += 1
        self._by_host[host] += 1
        self._half_open.setdefault(host, {})[slot] = None
        count = self.half_open[protocol] = self.half_open[protocol] + 1
        self.half_open_peak[protocol] = max(self.half_open_peak[protocol], count)
        return slot

    def _over_limit(self, host: str) -> str | None:
        limits = self.limits
        if limits.max_clients and self.clients >= limits.max_clients:
            return "max-clients"
        if limits.max_clients_per_address and self._by_host[host] >= limits.max_clients_per_address:
            return "max-clients-per-address"
        if len(self._half_open.get(host, ())) >= limits.half_open_per_address:
            return "half-open-per-address"
        return None

    def _room_for_half_open(self, host: str) -> bool:
        """Below the global half-open cap, or made so by evicting from the biggest holder."""
        if sum(self.half_open.values()) < self.limits.half_open_max:
            return True
        held = self._half_open
        biggest = max(held, key=lambda h: len(held[h]), default=None)
        if biggest is None or len(held[biggest]) <= len(held.get(host, ())) + 1:
            return False  # evicting would only make the newcomer's address the biggest
        victim = next(iter(held[biggest]))
        victim.release()
        self.refuse("evicted", biggest)
        victim.evict()
        return True

    def refuse(self, reason: str, host: str) -> None:
        """Count a refused client (also the acceptor's refusals) and say so, rate limited."""
        self.refused[reason] += 1
        sources = self.refused_sources
        sources[host] += 1
        if len(sources) > _SOURCES_KEPT:
            kept = sources.most_common(_SOURCES_KEPT // 2)
            self.refused_sources = collections.Counter(dict(kept))
        self._unlogged[reason] += 1
        now = self._clock()
        last = self._logged_at.get(reason)
        if last is not None and now - last < LOG_INTERVAL:
            return
        self._logged_at[reason] = now
        count, self._unlogged[reason] = self._unlogged[reason], 0
        why = _EXPLAIN.get(reason, reason).format(**vars(self.limits))
        if last is None:
            log.warning("refusing new OpenVPN clients: %s (first from %s); counted by "
                        "`sslvpn sessions --json`, said here at most every %g s", why, host,
                        LOG_INTERVAL)
        else:
            log.warning("refused %d more new OpenVPN client(s) in %.0f s: %s (latest from %s)",
                        count, now - last, why, host)

    def out_of_descriptors(self) -> None:
        """A TCP accept failed for want of a file descriptor: counted, said once."""
        self.refused[OUT_OF_DESCRIPTORS] += 1
        if self._said_out_of_descriptors:
            return
        self._said_out_of_descriptors = True
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        log.error("out of file descriptors with %d OpenVPN clients held: the open-file limit "
                  "is %d (hard limit %d), so new TCP clients wait unaccepted. Fix: raise the "
                  "open-file limit (LimitNOFILE= in the service unit, or ulimit -n before "
                  "`sslvpn serve`, which lifts its soft limit to the hard one at start) to at "
                  "least %d, the need of max-clients %d; said once, counted as %r in `sslvpn "
                  "sessions --json`", self.clients, soft, hard,
                  descriptors_needed(self.limits.max_clients or self.clients),
                  self.limits.max_clients or self.clients, OUT_OF_DESCRIPTORS)

    def _leave_half_open(self, slot: Slot) -> None:
        slot.half_open = False
        self.half_open[slot.protocol] -= 1
        held = self._half_open.get(slot.host)
        if held is not None:
            held.pop(slot, None)
            if not held:
                del self._half_open[slot.host]

    def _release(self, slot: Slot) -> None:
        if slot.half_open:
            self._leave_half_open(slot)
        slot.released = True
        self.clients -= 1
        self._by_host[slot.host] -= 1
        if not self._by_host[slot.host]:
            del self._by_host[slot.host]

    def status(self) -> ListenerStatus:
        """What the listeners hold and refused, for the faces and the metrics."""
        return ListenerStatus(
            clients=self.clients,
            half_open=dict(self.half_open),
            half_open_peak=dict(self.half_open_peak),
            refused=dict(self.refused),
            top_refused_sources=dict(self.refused_sources.most_common(TOP_SOURCES)),
            limits=vars(self.limits).copy(),
        )
