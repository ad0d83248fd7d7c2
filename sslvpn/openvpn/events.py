"""Events an OpenVPN session core hands to its driver (frozen dataclasses, past tense).

The runtime drains them with ``session.next_event()`` after every input. They carry facts,
never decisions: policy (revocation, user state, address allocation) stays with the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509

from sslvpn.openvpn.key_method import PeerInfo


@dataclass(frozen=True)
class Event:
    """Base class so drivers can type their dispatch tables."""


@dataclass(frozen=True)
class PeerVerified(Event):
    """TLS and key-method 2 completed with a client certificate that passed chain, expiry
    and EKU checks; the caller must now ``accept(push_config)`` or ``reject(reason)``."""

    certificate: x509.Certificate
    peer_info: PeerInfo
    username: str = ""
    password: str = field(default="", repr=False)
    tls_group: str | None = None  # the TLS key exchange's group, e.g. X25519MLKEM768


@dataclass(frozen=True)
class PeerRefused(Event):
    """Authentication failed: a server core refused the peer itself (bad chain, expired,
    wrong EKU, no shared cipher; AUTH_FAILED is queued and the session closes after a
    short linger), or, in the client role, the server sent AUTH_FAILED."""

    reason: str


@dataclass(frozen=True)
class SessionEstablished(Event):
    """Data keys are installed and PUSH_REPLY is queued: tunnel traffic may flow."""

    cipher: str
    key_derivation: str
    peer_id: int
    tls_version: str
    tls_group: str | None = None


@dataclass(frozen=True)
class TunnelPacket(Event):
    """An authenticated, replay-checked IP packet from the peer, compression framing removed."""

    ip_packet: bytes


@dataclass(frozen=True)
class KeysRenegotiated(Event):
    """A renegotiated key state is now the primary one (the old one stays as lame duck)."""

    key_id: int


@dataclass(frozen=True)
class PacketDropped(Event):
    """A datagram was discarded; ``reason`` is a short stable token for counters."""

    reason: str


@dataclass(frozen=True)
class ControlMessageReceived(Event):
    """A control-channel text message the core does not handle itself (e.g. CR_RESPONSE)."""

    message: str


@dataclass(frozen=True)
class ExitRequested(Event):
    """The peer announced it is leaving (control EXIT or OCC EXIT data packet)."""

    via: str


@dataclass(frozen=True)
class SessionClosed(Event):
    """The session is over; the driver should forget it after draining datagrams."""

    reason: str
