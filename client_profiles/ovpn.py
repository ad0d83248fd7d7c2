"""Render a self-contained ``.ovpn`` client profile for OpenVPN 2.4 on, Connect and NetworkManager.

Everything is inline (``<ca>``, ``<cert>``, ``<key>``, ``<tls-crypt>``/``<tls-crypt-v2>``)
because Connect's URL import has no side files. Remotes are listed UDP first, then TCP, so
clients fail over from UDP to TCP; a profile for a fleet of several nodes adds
``remote-random`` so clients spread over the nodes (the client shuffles the whole list once at
start, TCP entries included). Every value that lands on a directive line is checked so
that no input can smuggle in an extra directive.

Older clients: every line must parse on OpenVPN 2.4, which refuses unknown options outright.
The only newer one is ``data-ciphers`` (2.5); it is preceded by ``ignore-unknown-option
data-ciphers`` rather than rewritten as ``setenv opt data-ciphers ...``: the line stays an
ordinary directive, so 2.5+ and NetworkManager's importer read it as before
(NetworkManager drops a ``setenv opt`` line, so its connection would lose its cipher list),
and only that one name may be unknown, so a typo in any other line still fails loudly.
OpenVPN 3 never uses ``data-ciphers`` from a profile (it offers its own list); it notes the
line as ignored and goes on, while an unknown option it is not told to ignore is fatal to it.
2.4 skips it with one warning and negotiates AES-GCM by NCP. ``tls-crypt-v2`` is not
hidden that way: without it a 2.4 client cannot reach the gateway at all, so it should fail
on the profile (``client_requirement`` says which clients a gateway's profiles need).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

Transport = Literal["udp", "tcp"]
DATA_CIPHERS = "AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305"
# OpenVPN's option names for the client side of each transport [src options.c ascii2proto].
_PROTO_NAME: dict[Transport, str] = {"udp": "udp", "tcp": "tcp-client"}
# Without it a 2.6 client waits ~60 s on a silent UDP remote before trying the next one. After
# a ping-restart the client first retries the remote it was on (the dead node), and a lost
# host also costs its TCP entry when the shuffle put it next: 15 s restart + 1 s pause + two
# dead remotes at 5 s + a handshake stays under the fleet's 30 s; a live node answers a
# handshake well within 5 s.
SERVER_POLL_TIMEOUT_S = 5
# Options a 2.4 client may skip: they only narrow what 2.5+ negotiates.
NEWER_THAN_2_4 = ("data-ciphers",)
_HOST = re.compile(r"[A-Za-z0-9.:_-]{1,253}")
_PLAIN_TOKEN = re.compile(r"[^\s\"'\\#;]{1,255}")
_UNSAFE_IN_QUOTES = re.compile(r"[\"\\\r\n\x00]")


@dataclass(frozen=True)
class Remote:
    """One server address a client may try."""

    host: str
    port: int
    transport: Transport


TWO_FACTOR_PROMPT = "Code from your authenticator app"


@dataclass(frozen=True)
class ProfileMaterial:
    """Everything a profile contains; keys stay out of repr."""

    friendly_name: str
    server_name: str  # the gateway certificate's CN, checked by verify-x509-name
    remotes: tuple[Remote, ...]
    ca_pem: str
    cert_pem: str
    key_pem: str = field(repr=False)
    tls_crypt_key: str | None = field(default=None, repr=False)
    tls_crypt_v2_key: str | None = field(default=None, repr=False)
    spread: bool = False  # remotes belong to several nodes: clients pick one at random
    # the gateway refuses UDP tls-crypt-v2 clients that cannot do the cookie exchange (2.5)
    force_cookie: bool = False
    # VPN two-factor: the client asks for the user's password and a TOTP code at connect
    two_factor: bool = False


@dataclass(frozen=True)
class ClientRequirement:
    """Which clients take a gateway's profiles, for whoever hands them out."""

    oldest: str  # the oldest OpenVPN 2 release that connects, e.g. "2.5"
    text: str


def client_requirement(
    control_channel: str, *, udp: bool = True, force_cookie: bool = False
) -> ClientRequirement:
    """tls-crypt works from 2.4 on; tls-crypt-v2 from 2.5, and over UDP from 2.6 when the
    gateway forces the cookie exchange, which 2.5 cannot do (its TCP still works)."""
    if control_channel != "tls-crypt-v2":
        return ClientRequirement("2.4", "Needs OpenVPN 2.4 or later, or OpenVPN 3 (Connect).")
    if udp and force_cookie:
        return ClientRequirement("2.6", (
            "Needs OpenVPN 2.6 or later, or OpenVPN 3 (Connect): OpenVPN 2.5 connects over "
            "TCP only (it cannot do tls-crypt-v2's cookie exchange) and 2.4 not at all."))
    return ClientRequirement("2.5", "Needs OpenVPN 2.5 or later, or OpenVPN 3 (Connect); "
                                    "tls-crypt-v2 is unknown to OpenVPN 2.4.")


def remotes_for(
    public_addresses: Iterable[str],
    *,
    port: int,
    protocols: Literal["udp", "tcp", "both"],
    only: Transport | None = None,
) -> tuple[Remote, ...]:
    """The remote list for a gateway: every address over UDP first, then over TCP."""
    offered: list[Transport] = ["udp", "tcp"] if protocols == "both" else [protocols]
    if only is not None:
        if only not in offered:
            raise ValueError(f"the gateway does not offer {only}")
        offered = [only]
    addresses = list(public_addresses)
    remotes = tuple(Remote(a, port, t) for t in offered for a in addresses)
    if not remotes:
        raise ValueError("a profile needs at least one public address")
    return remotes


def render_ovpn(material: ProfileMaterial) -> str:
    """The profile text; UDP-only profiles also announce their exit to the server."""
    if not material.remotes:
        raise ValueError("a profile needs at least one remote")
    if (material.tls_crypt_key is None) == (material.tls_crypt_v2_key is None):
        raise ValueError("a profile needs exactly one of tls-crypt and tls-crypt-v2")
    transports = {remote.transport for remote in material.remotes}
    lines = [
        f"# {_quoted(material.friendly_name)}: generated by sslvpn",
        f'setenv FRIENDLY_NAME "{_quoted(material.friendly_name)}"',
        "client",
        "dev tun",
        f"proto {_PROTO_NAME[material.remotes[0].transport]}",
        *(_remote_line(remote) for remote in material.remotes),
        "resolv-retry infinite",
        "nobind",
        "persist-key",
        "persist-tun",
        "remote-cert-tls server",
        f"verify-x509-name {_token(material.server_name)} name",
        f"ignore-unknown-option {' '.join(NEWER_THAN_2_4)}",
        f"data-ciphers {DATA_CIPHERS}",
        "verb 3",
    ]
    if material.spread:
        lines.append("remote-random")
    if len(material.remotes) > 1:
        lines.append(f"server-poll-timeout {SERVER_POLL_TIMEOUT_S}")
    if transports == {"udp"}:
        lines.append("explicit-exit-notify 1")
    if material.two_factor:  # sent as SCRV1:password:code; a pushed auth-token replaces it,
        # so the password need not stay in the client's memory (auth-nocache)
        lines += ["auth-user-pass", f'static-challenge "{TWO_FACTOR_PROMPT}" 1', "auth-nocache"]
    lines += _block("ca", material.ca_pem)
    lines += _block("cert", material.cert_pem)
    lines += _block("key", material.key_pem)
    if material.tls_crypt_v2_key is not None:
        needs = client_requirement("tls-crypt-v2", udp="udp" in transports,
                                   force_cookie=material.force_cookie)
        lines.append(f"# {needs.text}")
        lines += _block("tls-crypt-v2", material.tls_crypt_v2_key)
    elif material.tls_crypt_key is not None:
        lines += _block("tls-crypt", material.tls_crypt_key)
    return "\n".join(lines) + "\n"


def _remote_line(remote: Remote) -> str:
    if not _HOST.fullmatch(remote.host):
        raise ValueError("a remote host may only contain letters, digits, '.', ':', '_' and '-'")
    if not 0 < remote.port < 65536:
        raise ValueError("a remote port must be 1..65535")
    return f"remote {remote.host} {remote.port} {_PROTO_NAME[remote.transport]}"


def _token(value: str) -> str:
    """A single unquoted option argument."""
    if not _PLAIN_TOKEN.fullmatch(value):
        raise ValueError("value cannot be used as an OpenVPN option argument")
    return value


def _quoted(value: str) -> str:
    """Text placed inside double quotes or a comment: no quotes, backslashes or line breaks."""
    if not value or _UNSAFE_IN_QUOTES.search(value):
        raise ValueError("friendly name must be non-empty, without quotes or line breaks")
    return value


def _block(tag: str, content: str) -> list[str]:
    """An inline file block; its content must not close the block early."""
    body = content.strip("\n")
    if f"</{tag}>" in body or not body:
        raise ValueError(f"invalid content for <{tag}>")
    return [f"<{tag}>", body, f"</{tag}>"]
