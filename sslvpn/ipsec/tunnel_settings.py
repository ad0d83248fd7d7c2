"""Per-tunnel liveness, lifetime and retransmission settings, named and defaulted like strongSwan.

One validated value object used by every face (CLI, REST API, portal) and the store, so
each bad value is refused with the same single line everywhere, and turned by the runtime
into the IKE core's timers (`ike_timers`). Names follow strongSwan: ``dpd_delay``,
``dpd_timeout``, ``dpd_action``; ipsec.conf's ``ikelifetime``/``lifetime``/``margintime``/
``rekeyfuzz`` (an SA is rekeyed ``margin`` plus a random part of ``margin x fuzz`` before
it ends); charon's ``retransmit_timeout``/``_tries``/``_base``/``_limit``, and its
``fragment_size``: the largest IP datagram of an IKE fragment (RFC 7383), lowered for paths
with a small MTU (PPPoE, GRE, IPsec inside IPsec).

Two defaults differ from strongSwan on purpose: ``dpd_timeout`` (30 s) bounds how long any
request on an established SA may go unanswered (strongSwan's IKEv2 waits out all five
retransmissions, ~165 s), and ``retransmit_limit`` (20 s) caps the back-off so a peer that
comes back after a partition hears from us within 20 s (strongSwan: no cap, up to 75 s).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from sslvpn.ipsec.ike.fragments import (
    DATAGRAM_OVERHEAD,
    FRAGMENT_DATAGRAM_SIZE,
    MAX_FRAGMENT_DATAGRAM,
    MIN_FRAGMENT_DATAGRAM,
)
from sslvpn.ipsec.policy import PolicyError

DPD_ACTIONS = ("restart", "clear", "none")
HOUR = 3600.0
DAY = 86400.0
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": HOUR, "d": DAY}


def parse_duration(value: object, what: str) -> float:
    """Seconds from ``30``, ``30s``, ``5m``, ``3h``, ``1d`` (strongSwan's notation) or a number."""
    if isinstance(value, bool):
        raise PolicyError(f"{what} must be a duration like 30s, 5m or 1h, not {value!r}")
    if isinstance(value, int | float):
        return float(value)
    found = _DURATION.fullmatch(str(value))
    if found is None:
        raise PolicyError(f"{what} must be a duration like 30s, 5m or 1h, not {value!r}")
    return float(found.group(1)) * _UNITS[found.group(2)]


def format_duration(seconds: float) -> str:
    """The shortest exact strongSwan notation (``90s``, ``9m``, ``3h``)."""
    for unit, size in (("d", DAY), ("h", HOUR), ("m", 60.0)):
        if seconds and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


# name: (what, lowest, highest, off value allowed as 0) for durations in seconds
_DURATIONS: dict[str, tuple[str, float, float, bool]] = {
    "dpd_delay": ("dpd delay", 1.0, HOUR, True),
    "dpd_timeout": ("dpd timeout", 1.0, HOUR, True),
    "ike_lifetime": ("IKE lifetime", 10.0, 7 * DAY, False),
    "child_lifetime": ("child lifetime", 10.0, 7 * DAY, False),
    "rekey_margin": ("rekey margin", 1.0, DAY, False),
    "retransmit_timeout": ("retransmit timeout", 0.5, 60.0, False),
    "retransmit_limit": ("retransmit limit", 1.0, 600.0, True),
}


@dataclass(frozen=True)
class TunnelSettings:
    """Timers of one tunnel, in seconds (fuzz in percent of the margin), and its IKE
    fragment size in bytes."""

    dpd_delay: float = 30.0
    dpd_timeout: float = 30.0
    dpd_action: str = "restart"
    ike_lifetime: float = 3 * HOUR
    child_lifetime: float = HOUR
    rekey_margin: float = 540.0
    rekey_fuzz: int = 100
    retransmit_timeout: float = 4.0
    retransmit_tries: int = 5
    retransmit_base: float = 1.8
    retransmit_limit: float = 20.0
    fragment_size: int = FRAGMENT_DATAGRAM_SIZE

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def changed(self, **values: object) -> TunnelSettings:
        """A checked copy with ``values`` (strings as an operator typed them, or numbers);
        raises `PolicyError` with one line naming the first bad value."""
        unknown = set(values) - set(self.names())
        if unknown:
            raise PolicyError(f"unknown tunnel setting {sorted(unknown)[0]!r}")
        merged = self.as_dict()
        for name, value in values.items():
            merged[name] = _parse(name, value)
        settings = TunnelSettings(**merged)
        settings.check()
        return settings

    def check(self) -> None:
        """Ranges, and rekeying that starts before each SA ends."""
        for name, (what, low, high, off) in _DURATIONS.items():
            value = getattr(self, name)
            if not (low <= value <= high or (off and value == 0)):
                zero = "0 (off) or " if off else ""
                raise PolicyError(f"{what} must be {zero}{format_duration(low)} to "
                                  f"{format_duration(high)}, not {format_duration(value)}")
        if self.dpd_action not in DPD_ACTIONS:
            raise PolicyError(f"dpd action must be one of {', '.join(DPD_ACTIONS)}, "
                              f"not {self.dpd_action!r}")
        _between("rekey fuzz", self.rekey_fuzz, 0, 200, "%")
        _between("retransmit tries", self.retransmit_tries, 0, 20, "")
        _between("retransmit base", self.retransmit_base, 1.0, 4.0, "")
        if not MIN_FRAGMENT_DATAGRAM <= self.fragment_size <= MAX_FRAGMENT_DATAGRAM:
            raise PolicyError(f"fragment size must be {MIN_FRAGMENT_DATAGRAM} to "
                              f"{MAX_FRAGMENT_DATAGRAM} bytes (the largest IKE datagram), "
                              f"not {self.fragment_size}")
        earliest = self.rekey_margin * (1 + self.rekey_fuzz / 100)
        for what, life in (("IKE", self.ike_lifetime), ("child", self.child_lifetime)):
            if earliest >= life:
                raise PolicyError(
                    f"rekey margin {format_duration(self.rekey_margin)} plus "
                    f"{self.rekey_fuzz}% fuzz must be shorter than the {what} lifetime "
                    f"{format_duration(life)}")

    def ike_timers(self) -> dict[str, float]:
        """The IKE core's timer arguments (`IkeConfig`), and its largest IKE message: the
        fragment size less the headers of an IPv6 datagram to port 4500."""
        jitter = self.rekey_margin * self.rekey_fuzz / 100
        return {
            "ike_rekey_time": self.ike_lifetime - self.rekey_margin,
            "ike_rekey_jitter": jitter,
            "child_rekey_time": self.child_lifetime - self.rekey_margin,
            "child_life_time": self.child_lifetime,
            "child_rekey_jitter": jitter,
            "dpd_delay": self.dpd_delay,
            "dpd_timeout": self.dpd_timeout,
            "retransmit_base": self.retransmit_timeout,
            "retransmit_factor": self.retransmit_base,
            "retransmit_tries": self.retransmit_tries,
            "retransmit_limit": self.retransmit_limit,
            "fragment_size": self.fragment_size - DATAGRAM_OVERHEAD,
        }


_INTEGERS = ("rekey_fuzz", "retransmit_tries", "fragment_size")


def _parse(name: str, value: object) -> object:
    if name in _DURATIONS:
        return parse_duration(value, _DURATIONS[name][0])
    what = name.replace("_", " ")
    if name == "dpd_action":
        return str(value).strip().lower()
    text = str(value).strip().rstrip("%")
    try:
        return int(text) if name in _INTEGERS else float(text)
    except ValueError:
        raise PolicyError(f"{what} must be a number, not {value!r}") from None


def _between(what: str, value: float, low: float, high: float, unit: str) -> None:
    if not low <= value <= high:
        raise PolicyError(f"{what} must be {low:g}{unit} to {high:g}{unit}, not {value:g}{unit}")
