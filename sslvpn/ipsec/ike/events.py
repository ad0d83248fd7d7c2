"""What an ``IkeSa`` tells its driver: frozen, past-tense events drained by ``next_event()``.

ESP SPIs are integers (host order of the 4 wire bytes). ``spi_in`` is the SPI the peer
puts on packets it sends to us (we allocated it); ``spi_out`` is the one we put on packets
we send (the peer allocated it). Keys are per direction and never appear in ``repr``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .proposals import Suite
from .traffic_selectors import TrafficSelector


@dataclass(frozen=True)
class EspKeys:
    """Keys for one ESP direction: AES key (+4-byte salt for GCM) and HMAC key (CBC only)."""

    encryption: bytes = field(repr=False)
    integrity: bytes = field(repr=False)


@dataclass(frozen=True)
class IkeSaEstablished:
    local_spi: bytes
    remote_spi: bytes
    suite: Suite
    remote_id: str


@dataclass(frozen=True)
class IkeSaRekeyed:
    """The IKE SA moved to new SPIs; demultiplex on ``new_local_spi`` from now on.
    ``collision``: both sides were rekeying it at once (settled by the lowest nonce)."""

    old_local_spi: bytes
    new_local_spi: bytes
    suite: Suite
    collision: bool = False


@dataclass(frozen=True)
class IkeRekeyFailed:
    """An IKE SA rekey was refused or went wrong; the SA stays up and tries again later."""

    reason: str


@dataclass(frozen=True)
class IkeSaClosed:
    """``unanswered``: the peer never answered (not a refusal): try again at once."""

    reason: str
    unanswered: bool = False


@dataclass(frozen=True)
class ChildSaEstablished:
    """Install ``spi_in`` inbound now; send on ``spi_out`` from now on.

    ``rekeyed_from`` is the ``spi_in`` of the CHILD_SA this one replaces: keep that old
    inbound SA until its ``ChildSaDeleted`` arrives, so no packet in flight is lost.
    ``outbound`` False: a redundant SA of a rekey collision, about to be deleted; install
    it inbound only (the peer may send on it meanwhile) and keep sending on the current one.
    """

    spi_in: int
    spi_out: int
    cipher: Suite
    keys_in: EspKeys
    keys_out: EspKeys
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    rekeyed_from: int | None = None
    outbound: bool = True


@dataclass(frozen=True)
class ChildSaDeleted:
    spi_in: int
    spi_out: int
    reason: str


@dataclass(frozen=True)
class ChildSaFailed:
    """A CHILD_SA could not be created or rekeyed (the IKE SA stays up)."""

    reason: str


@dataclass(frozen=True)
class AuthenticationFailed:
    reason: str


@dataclass(frozen=True)
class NoProposalChosen:
    """No common proposal in ``exchange`` (IKE_SA_INIT, IKE_AUTH or CREATE_CHILD_SA)."""

    exchange: str
    detail: str


@dataclass(frozen=True)
class PeerDead:
    """A request (DPD or other) went unanswered after all retransmissions."""


@dataclass(frozen=True)
class MessageDropped:
    """One peer message ignored; ``kind`` is its counter ("malformed", "unknown-spi",
    "bad-integrity", or "invalid" for a well-formed message that made no sense here)."""

    reason: str
    kind: str = "invalid"


IkeEvent = (
    IkeSaEstablished
    | IkeSaRekeyed
    | IkeRekeyFailed
    | IkeSaClosed
    | ChildSaEstablished
    | ChildSaDeleted
    | ChildSaFailed
    | AuthenticationFailed
    | NoProposalChosen
    | PeerDead
    | MessageDropped
)
