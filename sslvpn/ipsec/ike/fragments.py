"""IKE fragmentation (RFC 7383): our large SK messages as Encrypted Fragment (SKF) payloads,
and the peer's fragments reassembled with bounded memory.

Each fragment is a whole IKE message whose only payload is SKF: Fragment Number, Total
Fragments, then one chunk of the SK plaintext sealed on its own (AAD = the IKE header and
the SKF header, §2.5). A received fragment is kept only after its ICV verified (§2.6), so
nobody without the keys can make us store anything; one reassembly per IKE SA keys, at
most ``MAX_FRAGMENTS`` fragments and ``MAX_REASSEMBLED`` bytes, and a fragment of another
message or a smaller Total Fragments never grows it (§2.6.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sslvpn.net.buffer import Buffer

from .constants import GENERIC_PAYLOAD_HEADER_LENGTH, IKE_HEADER_LENGTH, PayloadType
from .messages import IkeHeader, SkfPayload, SkProtector, push_header

SKF_HEADER_LENGTH = GENERIC_PAYLOAD_HEADER_LENGTH + 4  # + Fragment Number, Total Fragments
# what a datagram adds around an IKE message on port 4500: IPv6 and UDP headers, non-ESP
# marker (IPv6's, so a size holds for either family)
DATAGRAM_OVERHEAD = 40 + 8 + 4
# tuning: 1280-byte datagrams (the IPv6 minimum MTU, strongSwan's charon.fragment_size)
FRAGMENT_DATAGRAM_SIZE = 1280
FRAGMENT_MESSAGE_SIZE = FRAGMENT_DATAGRAM_SIZE - DATAGRAM_OVERHEAD
# the smallest datagram worth configuring: its fragment carries 68 bytes (the IPv4 minimum
# MTU) after the headers and the largest sealing overhead (AES-CBC's 16-byte IV and up to 16
# bytes of padding, HMAC-SHA2-512-256's 32-byte ICV), so MAX_FRAGMENTS hold over 2 KiB
MIN_FRAGMENT_DATAGRAM = DATAGRAM_OVERHEAD + IKE_HEADER_LENGTH + SKF_HEADER_LENGTH + 64 + 68
MAX_FRAGMENT_DATAGRAM = 65535  # the largest IP datagram
MAX_FRAGMENTS = 32
MAX_REASSEMBLED = 64 * 1024  # plaintext bytes of one message


def seal_fragments(header: IkeHeader, first_inner: int, body: bytes,
                   protector: SkProtector, message_size: int) -> list[bytes]:
    """``body`` (an SK plaintext payload chain) as SKF messages of at most ``message_size``
    bytes each (RFC 7383 §2.5); ``header`` is that of the unfragmented message."""
    room = message_size - IKE_HEADER_LENGTH - SKF_HEADER_LENGTH
    chunk = room - (protector.sealed_length(room) - room)
    while chunk > 1 and protector.sealed_length(chunk) > room:
        chunk -= 1
    if chunk < 1:
        raise ValueError(f"IKE fragments of {message_size} bytes hold no data")
    pieces = [body[i:i + chunk] for i in range(0, len(body), chunk)] or [b""]
    if len(pieces) > MAX_FRAGMENTS:
        raise ValueError(f"{len(body)} bytes need more than {MAX_FRAGMENTS} fragments")
    out = []
    for number, piece in enumerate(pieces, 1):
        sealed_len = protector.sealed_length(len(piece))
        frag = IkeHeader(header.spi_i, header.spi_r, PayloadType.SKF, header.exchange,
                         header.flags, header.message_id,
                         IKE_HEADER_LENGTH + SKF_HEADER_LENGTH + sealed_len)
        aad = Buffer()
        push_header(aad, frag)
        aad.push_uint8(first_inner if number == 1 else 0)  # §2.5: 0 in later fragments
        aad.push_uint8(0)
        aad.push_uint16(SKF_HEADER_LENGTH + sealed_len)
        aad.push_uint16(number)
        aad.push_uint16(len(pieces))
        prefix = aad.getvalue()
        out.append(prefix + protector.seal(prefix, piece))
    return out


def open_fragment(data: bytes, skf: SkfPayload, protector: SkProtector) -> bytes | None:
    """The plaintext chunk of one received fragment, None when its ICV does not verify."""
    start = skf.offset + SKF_HEADER_LENGTH
    return protector.open(data[:start], data[start:])


@dataclass
class Reassembly:
    """The verified fragments of one message (one Message ID, request or response)."""

    message_id: int
    response: bool
    total: int
    first_inner: int = 0
    head: bytes = b""  # fragment 1's IKE header and SKF header (for IntAuth)
    chunks: dict[int, bytes] = field(default_factory=dict)
    size: int = 0

    def add(self, data: bytes, skf: SkfPayload, plain: bytes) -> bytes | None:
        """Keep one verified chunk; the whole plaintext once every fragment arrived, or
        None (a duplicate, or more than ``MAX_REASSEMBLED`` bytes, is ignored)."""
        if skf.number in self.chunks or self.size + len(plain) > MAX_REASSEMBLED:
            return None
        self.chunks[skf.number] = plain
        self.size += len(plain)
        if skf.number == 1:
            self.first_inner = skf.first_inner
            self.head = data[:skf.offset + GENERIC_PAYLOAD_HEADER_LENGTH]
        if len(self.chunks) < self.total:
            return None
        return b"".join(self.chunks[n] for n in range(1, self.total + 1))


def acceptable(skf: SkfPayload) -> bool:
    """The cheap checks of §2.6.1 before any decryption: 1 <= number <= total <= limit."""
    return 1 <= skf.number <= skf.total <= MAX_FRAGMENTS
