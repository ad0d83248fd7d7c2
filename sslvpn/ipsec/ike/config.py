"""The per-peer policy an ``IkeSa`` enforces: identities, PSK, proposals, SPD, timers.

Built by the runtime/CLI from validated settings; the core only reads it. Proposal strings
use strongSwan notation (see ``proposals.py``); identities are typed like strongSwan's
(``198.18.0.1`` is IPV4_ADDR, ``siteA.lab`` is FQDN, ``a@b`` is RFC822_ADDR).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from . import constants as c
from .constants import IdType, ProtocolId
from .fragments import FRAGMENT_MESSAGE_SIZE
from .proposals import ProposalSpec, parse_proposals
from .traffic_selectors import TrafficSelector


@dataclass(frozen=True)
class Identity:
    """An IKE identity as it goes on the wire (RFC 7296 §3.5): type and data."""

    id_type: int
    data: bytes

    @classmethod
    def parse(cls, text: str) -> Identity:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            kind = IdType.RFC822_ADDR if "@" in text else IdType.FQDN
            return cls(kind, text.encode("ascii"))
        kind = IdType.IPV4_ADDR if address.version == 4 else IdType.IPV6_ADDR
        return cls(kind, address.packed)

    def __str__(self) -> str:
        if self.id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
            try:
                return str(ipaddress.ip_address(self.data))
            except ValueError:
                return self.data.hex()
        return self.data.decode("ascii", "replace")


@dataclass(frozen=True)
class IkeConfig:
    """Everything one site-to-site connection needs; timers in seconds."""

    local_id: Identity
    remote_id: Identity | None
    psk: bytes = field(repr=False)
    ike_proposals: tuple[ProposalSpec, ...]
    esp_proposals: tuple[ProposalSpec, ...]
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    ike_rekey_time: float = c.DEFAULT_IKE_REKEY_TIME
    ike_rekey_jitter: float = c.DEFAULT_IKE_REKEY_JITTER
    child_rekey_time: float = c.DEFAULT_CHILD_REKEY_TIME
    child_life_time: float = c.DEFAULT_CHILD_LIFE_TIME
    child_rekey_jitter: float = c.DEFAULT_CHILD_REKEY_JITTER
    dpd_delay: float | None = c.DEFAULT_DPD_DELAY
    dpd_timeout: float = c.DEFAULT_DPD_TIMEOUT  # 0: only the retransmission tries count
    retransmit_base: float = c.RETRANSMIT_BASE
    retransmit_factor: float = c.RETRANSMIT_FACTOR
    retransmit_tries: int = c.RETRANSMIT_TRIES
    retransmit_limit: float = c.RETRANSMIT_LIMIT  # 0: no cap on the back-off
    half_open_timeout: float = c.HALF_OPEN_TIMEOUT
    force_encap: bool = True  # libipsec peers only do ESP-in-UDP: always float to 4500
    initial_contact: bool = True
    fragment_size: int = FRAGMENT_MESSAGE_SIZE  # largest IKE message before RFC 7383 splits

    @classmethod
    def build(
        cls,
        *,
        local_id: str,
        remote_id: str | None,
        psk: bytes,
        ike_proposals: str,
        esp_proposals: str,
        local_ts: list[str],
        remote_ts: list[str],
        **timers: float,
    ) -> IkeConfig:
        """From strongSwan-like strings: ``IkeConfig.build(local_id="siteA.lab", ...)``."""
        return cls(
            local_id=Identity.parse(local_id),
            remote_id=Identity.parse(remote_id) if remote_id else None,
            psk=psk,
            ike_proposals=tuple(parse_proposals(ike_proposals, ProtocolId.IKE)),
            esp_proposals=tuple(parse_proposals(esp_proposals, ProtocolId.ESP)),
            local_ts=tuple(TrafficSelector.from_network(n) for n in local_ts),
            remote_ts=tuple(TrafficSelector.from_network(n) for n in remote_ts),
            **timers,  # type: ignore[arg-type]
        )
