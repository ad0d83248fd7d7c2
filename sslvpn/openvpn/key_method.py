"""Key-method 2 record codec, the OCC options string, and peer-info parsing.

The key-method 2 record is the first TLS application-data message in each direction of
every key state (OpenVPN ssl.c key_method_2_write/key_method_2_read). Strings are a u16
length that includes a trailing NUL; length 0 means empty (ssl.c write_empty_string).
Peer-info is the client's newline-separated ``IV_*`` block (ssl.c push_peer_info).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import IntFlag

from sslvpn.net.buffer import Buffer, BufferReadError

KEY_METHOD_2 = 2  # ssl.h KEY_METHOD_2
KEY_METHOD_MASK = 0x0F  # ssl.h KEY_METHOD_MASK
PRE_MASTER_LEN = 48  # ssl.c key_source.pre_master
RANDOM_LEN = 32  # ssl.c key_source.random1/random2
TLS_OPTIONS_LEN = 512  # ssl.h TLS_OPTIONS_LEN: options string incl. NUL
MAX_CREDENTIAL_LEN = 4096  # misc.h USER_PASS_LEN in builds with PKCS#11 (Debian)
MAX_PEER_INFO_LEN = 8192  # generous: 2.6 peers send < 1 KB


class KeyMethodError(ValueError):
    """The peer's key-method 2 record is malformed (never carries secret values)."""


class IvProto(IntFlag):
    """IV_PROTO bits (ssl.h IV_PROTO_*; openvpn3 proto.hpp)."""

    DATA_V2 = 1 << 1
    REQUEST_PUSH = 1 << 2
    TLS_KEY_EXPORT = 1 << 3
    AUTH_PENDING_KW = 1 << 4
    NCP_P2P = 1 << 5
    DNS_OPTION = 1 << 6
    CC_EXIT_NOTIFY = 1 << 7
    AUTH_FAIL_TEMP = 1 << 8
    DYN_TLS_CRYPT = 1 << 9
    DATA_EPOCH = 1 << 10
    DNS_OPTION_V2 = 1 << 11
    PUSH_UPDATE = 1 << 12


@dataclass(frozen=True)
class KeyMethod2:
    """One key-method 2 record; ``pre_master`` is present only in the client's record."""

    random1: bytes = field(repr=False)
    random2: bytes = field(repr=False)
    options: str
    pre_master: bytes | None = field(default=None, repr=False)
    username: str = ""
    password: str = field(default="", repr=False)
    peer_info: str = ""


def _push_string(buf: Buffer, text: str) -> None:
    if not text:
        buf.push_uint16(0)
        return
    raw = text.encode() + b"\0"
    buf.push_uint16(len(raw))
    buf.push_bytes(raw)


def _pull_string(buf: Buffer, limit: int, what: str) -> str:
    length = buf.pull_uint16()
    if length > limit:
        raise KeyMethodError(f"{what} too long ({length} bytes)")
    raw = buf.pull_bytes(length)
    # ssl.c read_string force-terminates: everything from the first NUL on is ignored.
    raw = raw.split(b"\0", 1)[0] if b"\0" in raw else raw[:-1]
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise KeyMethodError(f"{what} is not UTF-8") from None


def push_key_method2(record: KeyMethod2) -> bytes:
    """Encode a record; the client form (with pre_master) when ``record.pre_master`` is set."""
    buf = Buffer()
    buf.push_uint32(0)
    buf.push_uint8(KEY_METHOD_2)
    if record.pre_master is not None:
        buf.push_bytes(record.pre_master)
    buf.push_bytes(record.random1)
    buf.push_bytes(record.random2)
    _push_string(buf, record.options)
    _push_string(buf, record.username)
    _push_string(buf, record.password)
    _push_string(buf, record.peer_info)
    return buf.getvalue()


def pull_key_method2(data: bytes, *, from_client: bool) -> KeyMethod2:
    """Decode the peer's record; trailing bytes are ignored like ssl.c key_method_2_read."""
    buf = Buffer(data)
    try:
        buf.pull_uint32()
        if buf.pull_uint8() & KEY_METHOD_MASK != KEY_METHOD_2:
            raise KeyMethodError("not key-method 2")
        pre_master = buf.pull_bytes(PRE_MASTER_LEN) if from_client else None
        random1 = buf.pull_bytes(RANDOM_LEN)
        random2 = buf.pull_bytes(RANDOM_LEN)
        options = _pull_string(buf, TLS_OPTIONS_LEN, "options string")
        optional = ["", "", ""]
        limits = (MAX_CREDENTIAL_LEN, MAX_CREDENTIAL_LEN, MAX_PEER_INFO_LEN)
        for index, what in enumerate(("username", "password", "peer-info")):
            if buf.eof():
                break
            optional[index] = _pull_string(buf, limits[index], what)
    except BufferReadError:
        raise KeyMethodError("key-method 2 record truncated") from None
    return KeyMethod2(
        random1=random1,
        random2=random2,
        options=options,
        pre_master=pre_master,
        username=optional[0],
        password=optional[1],
        peer_info=optional[2],
    )


@dataclass(frozen=True)
class PeerInfo:
    """The typed view of a client's peer-info block; ``values`` keeps every variable."""

    version: str = ""
    platform: str = ""
    proto: IvProto = IvProto(0)
    ciphers: tuple[str, ...] = ()
    ncp: int = 0
    mtu: int | None = None
    comp_stub_v2: bool = False
    lzo_stub: bool = False
    values: tuple[tuple[str, str], ...] = ()

    def supports(self, flag: IvProto) -> bool:
        return bool(self.proto & flag)

    def get(self, name: str, default: str = "") -> str:
        for key, value in self.values:
            if key == name:
                return value
        return default


def _int_or(text: str, default: int) -> int:
    try:
        return int(text, 10)
    except ValueError:
        return default


def parse_peer_info(text: str) -> PeerInfo:
    """Parse ``VAR=VALUE`` lines; malformed lines are skipped, never fatal."""
    values: list[tuple[str, str]] = []
    for line in text.split("\n"):
        name, sep, value = line.strip("\r").partition("=")
        if sep and name and name.replace("_", "").isalnum():
            values.append((name, value))
    table = dict(values)
    ciphers = tuple(c for c in table.get("IV_CIPHERS", "").split(":") if c)
    mtu = _int_or(table.get("IV_MTU", ""), -1)
    return PeerInfo(
        version=table.get("IV_VER", ""),
        platform=table.get("IV_PLAT", ""),
        proto=IvProto(max(_int_or(table.get("IV_PROTO", ""), 0), 0) & _ALL_IV_PROTO),
        ciphers=ciphers,
        ncp=_int_or(table.get("IV_NCP", ""), 0),
        mtu=mtu if mtu > 0 else None,
        comp_stub_v2=table.get("IV_COMP_STUBv2") == "1",
        lzo_stub=table.get("IV_LZO_STUB") == "1",
        values=tuple(values),
    )


_ALL_IV_PROTO = sum(int(flag) for flag in IvProto)
SOFTWARE_TEXT_MAX = 64  # characters kept of each peer-info value shown to admins
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


@dataclass(frozen=True)
class ClientSoftware:
    """Which client program connected, for admins planning to retire old ones.

    Read from a fixed list of peer-info variables that describe software, never from the
    ones that carry secrets or identities (IV_SSO, UV_*, IV_HWADDR); values are the
    client's own words, so they are cut short and kept to printable ASCII.
    """

    version: str | None = None  # IV_VER: "2.4.12", "3.10" (OpenVPN 3 core)
    platform: str | None = None  # IV_PLAT and IV_PLAT_VER: "linux", "win 10.0.19045"
    gui: str | None = None  # IV_GUI_VER: "OCmacOS_3.4.4", "de.blinkt.openvpn 0.7.51"


def client_software(info: PeerInfo) -> ClientSoftware:
    """The shown software facts of a peer-info block (None where the client said nothing)."""
    platform = " ".join(v for v in (info.get("IV_PLAT"), info.get("IV_PLAT_VER")) if v)
    return ClientSoftware(
        version=_shown(info.get("IV_VER")),
        platform=_shown(platform),
        gui=_shown(info.get("IV_GUI_VER")),
    )


def _shown(text: str) -> str | None:
    cleaned = _UNPRINTABLE.sub("", text).strip()[:SOFTWARE_TEXT_MAX]
    return cleaned or None


# The OCC fields describe the legacy BF-CBC/HMAC-SHA1 fallback that a profile without a
# ``cipher`` line implies; 2.4 to 2.6 compute link-mtu for it (mtu.c
# calc_options_string_link_mtu): tun-mtu + opcode 1 + IV 8 + CBC padding 8 + HMAC 20 + packet
# id 4, plus the 2-byte length prefix over TCP and 1 byte when compression framing is on.
OCC_TUN_MTU = 1500
_OCC_FALLBACK_OVERHEAD = 1 + 8 + 8 + 20 + 4
_OCC_TCP_LENGTH = 2
_OCC_COMPRESSION_BYTE = 1
OCC_FALLBACK_CIPHER = "BF-CBC"


def occ_options_string(
    *, server: bool, tcp: bool, compression: bool = False, cipher: str | None = None
) -> str:
    """The OCC string 2.6 writes for an AEAD-only config (options.c options_string).

    Peers only warn on mismatches; a server passes what the client's own string showed
    (compression framing, ``occ_echoed_cipher``) so that 2.4 and 2.5 clients find exactly
    the string they expect from their server.
    """
    role = "server" if server else "client"
    proto = f"TCPv4_{role.upper()}" if tcp else "UDPv4"
    link_mtu = OCC_TUN_MTU + _OCC_FALLBACK_OVERHEAD
    link_mtu += (_OCC_TCP_LENGTH if tcp else 0) + (_OCC_COMPRESSION_BYTE if compression else 0)
    comp = ",comp-lzo" if compression else ""
    announced = f",cipher {cipher}" if cipher else ""
    return (
        f"V4,dev-type tun,link-mtu {link_mtu},tun-mtu {OCC_TUN_MTU},proto {proto}{comp}"
        f"{announced},auth SHA1,keysize 128,key-method 2,tls-{role}"
    )


def occ_echoed_cipher(options: str) -> str | None:
    """The ``cipher`` entry a server's OCC string mirrors from the client's, if any.

    2.4 compares the ``cipher`` entry and always sends one: ``cipher BF-CBC`` when the
    profile has no cipher line, the very fallback our link-mtu describes, so we echo
    exactly that one. 2.5 and later skip ``cipher`` entries when comparing (options.c
    options_warning_safe_scan2), and any other legacy cipher is a real difference the
    client may rightly warn about.
    """
    return OCC_FALLBACK_CIPHER if f"cipher {OCC_FALLBACK_CIPHER}" in options.split(",") else None


def occ_wants_compression_framing(options: str) -> bool:
    """True when the peer's OCC string shows a compression directive (options.c ``,comp-lzo``).

    Such a client also expects ``,comp-lzo`` and one more byte of link-mtu from the server
    (2.6 ssl_util.c options_string_compat_lzo does the same under ``compress migrate``).
    """
    return "comp-lzo" in options.split(",")
