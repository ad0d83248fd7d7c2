"""The customer gateway's side of a tunnel, rendered for the peer's own software.

From one tunnel (addresses, identities, proposals, timers, SPD policies) this renders what
the operator of the remote site pastes into strongSwan (``swanctl.conf``, or the legacy
``ipsec.conf`` + ``ipsec.secrets``), Libreswan (``ipsec.conf`` + ``ipsec.secrets``), or
types into any other gateway (a plain-text sheet). Everything is seen from the peer: its
``local`` is the customer gateway, its ``remote`` our VPN gateway. The pre-shared key is
left out unless the caller asks for it.

Timers map onto each format's own model: ours is ipsec.conf's (lifetime, margin, fuzz), so
swanctl gets ``rekey_time = lifetime - margin``, ``over_time = margin`` and ``rand_time =
margin x fuzz``. The peer's start action complements ours: when we initiate, the peer
waits (and restarts on a dead peer); when we wait, the peer starts the tunnel.

The IKE fragment size has no per-connection setting in either strongSwan file: it is
``charon.fragment_size`` in strongswan.conf, for all connections, so both strongSwan formats
name it in a comment; Libreswan has no such setting at all (it sizes fragments by address
family), so its file only turns fragmentation on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .ike.constants import DhGroup, EncrId, IntegId, PrfId, ProtocolId
from .ike.proposals import ProposalSpec, expand_default, parse_proposals
from .tunnel_settings import TunnelSettings, format_duration

FORMATS = ("swanctl", "strongswan-ipsec", "libreswan", "text")
_SUFFIXES = {"swanctl": "swanctl.conf", "strongswan-ipsec": "ipsec.conf",
             "libreswan": "libreswan.conf", "text": "txt"}
_PEER_START = {"initiate": ("none", "add"), "wait": ("start", "start"),
               "trap": ("start", "start")}  # ours -> (swanctl, ipsec.conf auto=)


class StoredTunnel(Protocol):
    """What the store knows of a tunnel (``ipsec_queries.TunnelConfig``)."""

    @property
    def name(self) -> str: ...
    @property
    def remote_address(self) -> str: ...
    @property
    def psk(self) -> str: ...
    @property
    def ike_proposals(self) -> str: ...
    @property
    def esp_proposals(self) -> str: ...
    @property
    def start_action(self) -> str: ...
    @property
    def policies(self) -> Sequence[tuple[str, str]]: ...
    @property
    def timers(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class PeerTunnel:
    """One tunnel as its customer gateway sees it (addresses and networks from its side)."""

    name: str
    peer_address: str  # the customer gateway: the peer's local address and identity
    gateway_addresses: tuple[str, ...]  # ours; the first is our IKE identity
    psk: str = field(repr=False)
    ike_proposals: str
    esp_proposals: str
    start_action: str  # ours: initiate | wait | trap
    peer_networks: tuple[str, ...]  # behind the customer gateway (its local_ts)
    our_networks: tuple[str, ...]  # behind our gateway (its remote_ts)
    settings: TunnelSettings = field(default_factory=TunnelSettings)

    @classmethod
    def of(cls, stored: StoredTunnel, gateway_addresses: Sequence[str]) -> PeerTunnel:
        """From the store's view of a tunnel, whose policies are (our CIDR, peer CIDR)."""
        return cls(name=stored.name, peer_address=stored.remote_address,
                   gateway_addresses=tuple(dict.fromkeys(gateway_addresses)),
                   psk=stored.psk, ike_proposals=stored.ike_proposals,
                   esp_proposals=stored.esp_proposals, start_action=stored.start_action,
                   peer_networks=tuple(dict.fromkeys(peer for _, peer in stored.policies)),
                   our_networks=tuple(dict.fromkeys(ours for ours, _ in stored.policies)),
                   settings=TunnelSettings(**stored.timers))

    @property
    def gateway_id(self) -> str:
        return self.gateway_addresses[0]


def render(tunnel: PeerTunnel, fmt: str, *, include_psk: bool = False) -> str:
    """The peer's configuration in ``fmt`` (one of ``FORMATS``)."""
    renderers: dict[str, Callable[[PeerTunnel, bool], str]] = {
        "swanctl": _swanctl, "strongswan-ipsec": _strongswan_ipsec,
        "libreswan": _libreswan, "text": _text,
    }
    if fmt not in renderers:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return renderers[fmt](tunnel, include_psk)


def file_name(tunnel_name: str, fmt: str) -> str:
    """What a download of ``fmt`` is called, e.g. ``dc1-tun.swanctl.conf``."""
    return f"{tunnel_name}.{_SUFFIXES[fmt]}"


def _psk_value(psk: str) -> str:
    """A quoted string where the formats read it so, else hex (``0x...``), which strongSwan
    and Libreswan both accept, for keys with quotes, backslashes or '#'."""
    if any(ch in psk for ch in '"\\#'):
        return "0x" + psk.encode().hex()
    return f'"{psk}"'


def _lines(*parts: str | None) -> str:
    return "\n".join(p for p in parts if p is not None) + "\n"


def _header(tunnel: PeerTunnel, what: str, comment: str = "#") -> str:
    return (f"{comment} {what} for {tunnel.peer_address}: the customer gateway's side of "
            f"sslvpn tunnel {tunnel.name}")


def _timers(t: TunnelSettings) -> dict[str, str]:
    d = format_duration
    rand = t.rekey_margin * t.rekey_fuzz / 100
    return {"ike_rekey": d(t.ike_lifetime - t.rekey_margin), "over": d(t.rekey_margin),
            "rand": d(rand), "child_rekey": d(t.child_lifetime - t.rekey_margin),
            "child_life": d(t.child_lifetime)}


def _fragment_note(t: TunnelSettings, strongswan: bool) -> str:
    """Where the peer's software sets the size of its own IKE fragments, if anywhere."""
    own = (f"strongSwan sets its own for all connections in strongswan.conf: "
           f"charon {{ fragment_size = {t.fragment_size} }}" if strongswan
           else "Libreswan has no setting for the size of its own")
    return (f"# IKE fragments (RFC 7383): ours are datagrams of at most {t.fragment_size} "
            f"bytes;\n# {own}")


def _swanctl(tunnel: PeerTunnel, include_psk: bool) -> str:
    t, tm = tunnel.settings, _timers(tunnel.settings)
    start, _ = _PEER_START[tunnel.start_action]
    dpd = format_duration(t.dpd_delay) if t.dpd_delay else "0s"
    ts = [f"                local_ts = {', '.join(tunnel.peer_networks)}",
          f"                remote_ts = {', '.join(tunnel.our_networks)}"]
    if not tunnel.peer_networks:
        ts = ["                # no SPD policies yet: add them with `sslvpn ipsec policy add`"]
    comment = "" if include_psk else "# "
    secret = _psk_value(tunnel.psk) if include_psk else '"<pre-shared key>"'
    return _lines(
        _header(tunnel, "strongSwan swanctl.conf"),
        "# load with: swanctl --load-all" + ("" if include_psk else
                                            " (after filling in the secret below)"),
        _fragment_note(t, strongswan=True),
        "connections {",
        f"    {tunnel.name} {{",
        "        version = 2",
        f"        local_addrs = {tunnel.peer_address}",
        f"        remote_addrs = {', '.join(tunnel.gateway_addresses)}",
        f"        proposals = {_strongswan(tunnel.ike_proposals, ProtocolId.IKE)}",
        f"        rekey_time = {tm['ike_rekey']}",
        f"        over_time = {tm['over']}",
        f"        rand_time = {tm['rand']}",
        f"        dpd_delay = {dpd}",
        "        fragmentation = yes",
        "        mobike = no",
        "        local {",
        "            auth = psk",
        f"            id = {tunnel.peer_address}",
        "        }",
        "        remote {",
        "            auth = psk",
        f"            id = {tunnel.gateway_id}",
        "        }",
        "        children {",
        f"            {tunnel.name} {{",
        "                mode = tunnel",
        *ts,
        f"                esp_proposals = {_strongswan(tunnel.esp_proposals, ProtocolId.ESP)}",
        f"                rekey_time = {tm['child_rekey']}",
        f"                life_time = {tm['child_life']}",
        f"                rand_time = {tm['rand']}",
        f"                dpd_action = {t.dpd_action}",
        f"                start_action = {start}",
        "                close_action = none",
        "            }",
        "        }",
        "    }",
        "}",
        f"{comment}secrets {{",
        f"{comment}    ike-{tunnel.name} {{",
        f"{comment}        id-local = {tunnel.peer_address}",
        f"{comment}        id-remote = {tunnel.gateway_id}",
        f"{comment}        secret = {secret}",
        f"{comment}    }}",
        f"{comment}}}",
    )


def _strongswan(text: str, protocol: ProtocolId) -> str:
    """Our proposals in strongSwan notation: ``default`` spelt out (strongSwan's own
    ``default`` is another list)."""
    parse_proposals(text, protocol)  # refuses what we could not negotiate either
    return expand_default(text, protocol)


def _strongswan_ipsec(tunnel: PeerTunnel, include_psk: bool) -> str:
    t = tunnel.settings
    d = format_duration
    _, auto = _PEER_START[tunnel.start_action]
    secret = _psk_value(tunnel.psk) if include_psk else '"<pre-shared key>"'
    return _lines(
        _header(tunnel, "strongSwan /etc/ipsec.conf (legacy, ipsec starter)"),
        f"conn {tunnel.name}",
        "    keyexchange=ikev2",
        f"    left={tunnel.peer_address}",
        f"    leftid={tunnel.peer_address}",
        f"    leftsubnet={','.join(tunnel.peer_networks)}" if tunnel.peer_networks else None,
        "    leftauth=psk",
        f"    right={','.join(tunnel.gateway_addresses)}",
        f"    rightid={tunnel.gateway_id}",
        f"    rightsubnet={','.join(tunnel.our_networks)}" if tunnel.our_networks else None,
        "    rightauth=psk",
        f"    ike={_strongswan(tunnel.ike_proposals, ProtocolId.IKE)}!",
        f"    esp={_strongswan(tunnel.esp_proposals, ProtocolId.ESP)}!",
        f"    ikelifetime={d(t.ike_lifetime)}",
        f"    lifetime={d(t.child_lifetime)}",
        f"    margintime={d(t.rekey_margin)}",
        f"    rekeyfuzz={t.rekey_fuzz}%",
        f"    dpddelay={d(t.dpd_delay)}" if t.dpd_delay else None,
        f"    dpdaction={t.dpd_action}" if t.dpd_delay else None,
        "    fragmentation=yes",
        "    mobike=no",
        f"    auto={auto}",
        "",
        "# /etc/ipsec.secrets:",
        f"# {tunnel.peer_address} {tunnel.gateway_id} : PSK {secret}",
        "",
        _fragment_note(t, strongswan=True),
    )


# Libreswan's algorithm names (ipsec.conf(5) ike=/esp=; checked with its algparse)
_LSW_ENCR = {(EncrId.AES_GCM_16, 128): "aes_gcm128", (EncrId.AES_GCM_16, 192): "aes_gcm192",
             (EncrId.AES_GCM_16, 256): "aes_gcm256", (EncrId.AES_CBC, 128): "aes128",
             (EncrId.AES_CBC, 192): "aes192", (EncrId.AES_CBC, 256): "aes256"}
_LSW_HASH = {PrfId.HMAC_SHA2_256: "sha2_256", PrfId.HMAC_SHA2_384: "sha2_384",
             PrfId.HMAC_SHA2_512: "sha2_512", IntegId.HMAC_SHA2_256_128: "sha2_256",
             IntegId.HMAC_SHA2_384_192: "sha2_384", IntegId.HMAC_SHA2_512_256: "sha2_512"}
_LSW_DH = {DhGroup.MODP_2048: "modp2048", DhGroup.ECP_256: "dh19", DhGroup.ECP_384: "dh20",
           DhGroup.ECP_521: "dh21", DhGroup.CURVE25519: "dh31"}


def _lsw_proposal(spec: ProposalSpec, with_dh: bool) -> str:
    """``aes_gcm256+aes_gcm128-sha2_512+sha2_256-dh19+modp2048``: alternatives joined by
    '+'. Libreswan names one hash list for both PRF and integrity, so a classic proposal
    lists its integrity algorithms (ours derive the PRF from them unless told otherwise)."""
    parts = ["+".join(_LSW_ENCR[e] for e in spec.encrs)]
    hashes = spec.integs if spec.integs else spec.prfs
    if hashes:
        parts.append("+".join(dict.fromkeys(_LSW_HASH[h] for h in hashes)))
    if with_dh and spec.dhs:
        parts.append("+".join(_LSW_DH[g] for g in spec.dhs))
    return "-".join(parts)


def _libreswan_esp(text: str) -> tuple[str, bool]:
    """(esp=, pfs) for Libreswan, where PFS is one switch for every ESP proposal: our
    proposals without PFS when there are any, else those with it."""
    specs = parse_proposals(text, ProtocolId.ESP)
    plain = [s for s in specs if not s.dhs]
    chosen = plain or specs
    return ",".join(dict.fromkeys(_lsw_proposal(s, not plain) for s in chosen)), not plain


def _libreswan(tunnel: PeerTunnel, include_psk: bool) -> str:
    t = tunnel.settings
    d = format_duration
    _, auto = _PEER_START[tunnel.start_action]
    ike = ",".join(_lsw_proposal(s, True)
                   for s in parse_proposals(tunnel.ike_proposals, ProtocolId.IKE))
    esp, pfs = _libreswan_esp(tunnel.esp_proposals)
    secret = _psk_value(tunnel.psk) if include_psk else '"<pre-shared key>"'

    def subnets(side: str, nets: tuple[str, ...]) -> str | None:
        if not nets:
            return None
        if len(nets) == 1:
            return f"    {side}subnet={nets[0]}"
        return f"    {side}subnets={{{' '.join(nets)}}}"

    return _lines(
        _header(tunnel, "Libreswan /etc/ipsec.conf (or /etc/ipsec.d/*.conf)"),
        f"conn {tunnel.name}",
        "    ikev2=insist",
        "    authby=secret",
        f"    left={tunnel.peer_address}",
        f"    leftid={tunnel.peer_address}",
        subnets("left", tunnel.peer_networks),
        f"    right={tunnel.gateway_id}",
        f"    rightid={tunnel.gateway_id}",
        subnets("right", tunnel.our_networks),
        f"    ike={ike}",
        f"    esp={esp}",
        f"    pfs={'yes' if pfs else 'no'}",
        f"    ikelifetime={d(t.ike_lifetime)}",
        f"    salifetime={d(t.child_lifetime)}",
        f"    rekeymargin={d(t.rekey_margin)}",
        f"    rekeyfuzz={t.rekey_fuzz}%",
        f"    dpddelay={d(t.dpd_delay)}" if t.dpd_delay else None,
        f"    dpdtimeout={d(t.dpd_timeout)}" if t.dpd_delay and t.dpd_timeout else None,
        f"    dpdaction={'hold' if t.dpd_action == 'none' else t.dpd_action}"
        if t.dpd_delay else None,
        "    fragmentation=yes",
        f"    auto={auto}",
        "",
        "# /etc/ipsec.secrets (or /etc/ipsec.d/*.secrets):",
        f"# {tunnel.peer_address} {tunnel.gateway_id} : PSK {secret}",
        "",
        _fragment_note(t, strongswan=False),
    )


def _text(tunnel: PeerTunnel, include_psk: bool) -> str:
    t = tunnel.settings
    d = format_duration
    rows = [
        ("Tunnel", tunnel.name),
        ("IKE version", "IKEv2"),
        ("Your gateway (local address and identity)", tunnel.peer_address),
        ("Our gateway (remote address)", ", ".join(tunnel.gateway_addresses)),
        ("Our identity (remote ID)", tunnel.gateway_id),
        ("Authentication", "pre-shared key"),
        ("Pre-shared key", tunnel.psk if include_psk else "(not shown: ask with --include-psk)"),
        ("IKE proposals", _strongswan(tunnel.ike_proposals, ProtocolId.IKE).replace(",", ", ")),
        ("ESP proposals", _strongswan(tunnel.esp_proposals, ProtocolId.ESP).replace(",", ", ")),
        ("IKE SA lifetime", d(t.ike_lifetime)),
        ("CHILD SA lifetime", d(t.child_lifetime)),
        ("Rekey margin", f"{d(t.rekey_margin)} plus up to {t.rekey_fuzz}%"),
        ("Dead peer detection", f"every {d(t.dpd_delay)}, timeout {d(t.dpd_timeout)}, then "
                                f"{t.dpd_action}" if t.dpd_delay else "off"),
        ("Your networks (local traffic selectors)", ", ".join(tunnel.peer_networks) or "-"),
        ("Our networks (remote traffic selectors)", ", ".join(tunnel.our_networks) or "-"),
        ("NAT traversal", "UDP 500, then 4500 (ESP in UDP, RFC 3948)"),
        ("IKE fragmentation", f"RFC 7383; we send datagrams of at most {t.fragment_size} "
                              "bytes"),
        ("Who starts", "we initiate; your side may wait" if tunnel.start_action == "initiate"
         else "your side initiates"),
    ]
    width = max(len(k) for k, _ in rows)
    return _lines(_header(tunnel, "IPsec parameters"), "",
                  *(f"{k.ljust(width)}  {v}" for k, v in rows))
