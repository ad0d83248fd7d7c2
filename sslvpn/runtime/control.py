"""GatewayControl: the one small interface the portal and CLI use to talk to a running gateway.

Implemented in-process by the runtime's gateway and, for a portal or CLI in another process,
by a client of the gateway's local control socket.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


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
    last_activity: datetime
    bytes_in: int  # from the client into the VPC
    bytes_out: int  # from the VPC to the client


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


class GatewayControl(Protocol):
    def list_sessions(self) -> list[SessionInfo]: ...

    def kick(self, session_id: str, reason: str = "kicked by admin") -> bool: ...

    def kick_certificate(self, serial: str, reason: str = "certificate revoked") -> int: ...

    def traffic(self) -> TrafficSample: ...

    def tunnel_status(self) -> list[TunnelStatus]: ...
