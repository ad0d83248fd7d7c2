"""CHILD_SA records kept by an ``IkeSa``: SPIs, ESP keys per direction, selectors, timers.

Keys come from KEYMAT = prf+(SK_d, [g^ir |] Ni | Nr) where "i" is the initiator of the
exchange that created the CHILD_SA (RFC 7296 §2.17), which may differ from the IKE SA's
original initiator once the original responder rekeys.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .crypto import Rand, derive_child_keys
from .events import ChildSaEstablished, EspKeys
from .proposals import Suite
from .traffic_selectors import TrafficSelector


class ChildState(Enum):
    INSTALLED = "installed"
    REKEYING = "rekeying"  # our CREATE_CHILD_SA for it is outstanding
    REKEYED = "rekeyed"  # replaced; inbound kept until the DELETE exchange completes
    DELETING = "deleting"


@dataclass
class ChildSa:
    spi_in: bytes
    spi_out: bytes
    suite: Suite
    keys_in: EspKeys
    keys_out: EspKeys
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    rekey_at: float
    expire_at: float
    state: ChildState = ChildState.INSTALLED
    rekeyed: bool = False  # replaced by a newer CHILD_SA (its DELETE says "rekeyed")
    # while our rekey of this SA is outstanding the peer rekeyed it too (RFC 7296 §2.8.1):
    # the CHILD_SA the peer created and the lower nonce of the peer's exchange
    collision: tuple[ChildSa, bytes] | None = None
    # the rekey's new SA that takes over sending once this one is removed; ``held``: a new
    # SA whose rekey the peer started, inbound only until then (the peer may not have
    # installed it yet: as strongSwan, its responder sends on it once the old one is gone)
    successor: ChildSa | None = None
    held: bool = False

    def __repr__(self) -> str:
        return f"ChildSa(in={self.spi_in.hex()}, out={self.spi_out.hex()}, {self.state.value})"

    def established(self, rekeyed_from: bytes | None, outbound: bool) -> ChildSaEstablished:
        return ChildSaEstablished(
            spi_in=int.from_bytes(self.spi_in, "big"),
            spi_out=int.from_bytes(self.spi_out, "big"),
            cipher=self.suite,
            keys_in=self.keys_in,
            keys_out=self.keys_out,
            local_ts=self.local_ts,
            remote_ts=self.remote_ts,
            rekeyed_from=int.from_bytes(rekeyed_from, "big") if rekeyed_from else None,
            outbound=outbound,
        )


def jitter(rand: Rand, limit: float) -> float:
    """A uniform fraction of ``limit`` from the injected randomness (rekey spreading)."""
    return limit * int.from_bytes(rand(2), "big") / 0xFFFF


def new_spi(rand: Rand) -> bytes:
    """A random ESP SPI outside the reserved 0-255 range (RFC 4303 §2.1)."""
    while True:
        spi = rand(4)
        if int.from_bytes(spi, "big") > 255:
            return spi


@dataclass(frozen=True)
class ChildParams:
    """What a negotiation settled, before keys are cut."""

    suite: Suite
    spi_in: bytes
    spi_out: bytes
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]


def make_child(
    params: ChildParams,
    *,
    sk_d: bytes,
    prf_suite: Suite,
    nonce_i: bytes,
    nonce_r: bytes,
    shared: bytes,
    we_initiated: bool,
    now: float,
    rekey_time: float,
    life_time: float,
    rekey_jitter: float,
    rand: Rand,
) -> ChildSa:
    """Cut KEYMAT and assign directions: the exchange initiator sends with the 'i' keys."""
    if prf_suite.prf is None:
        raise ValueError("an IKE suite always has a prf")
    suite = params.suite
    keys = derive_child_keys(
        prf_suite.prf, sk_d, suite.encr, suite.key_bits, suite.integ, nonce_i, nonce_r, shared
    )
    keys_i = EspKeys(keys.encr_i, keys.integ_i)
    keys_r = EspKeys(keys.encr_r, keys.integ_r)
    keys_out, keys_in = (keys_i, keys_r) if we_initiated else (keys_r, keys_i)
    return ChildSa(
        spi_in=params.spi_in,
        spi_out=params.spi_out,
        suite=suite,
        keys_in=keys_in,
        keys_out=keys_out,
        local_ts=params.local_ts,
        remote_ts=params.remote_ts,
        rekey_at=now + rekey_time - jitter(rand, rekey_jitter),
        expire_at=now + life_time,
    )
