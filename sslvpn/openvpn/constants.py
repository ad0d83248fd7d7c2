"""OpenVPN 2.x wire constants: what the protocol fixes first, what we choose to tune after.

Spec constants are facts of the wire format that a 2.4-2.6 client or OpenVPN 3 relies on;
changing one breaks interoperability. Tuning constants are our choices (mostly OpenVPN's own
defaults) that a peer tolerates within limits. Each value names its source in OpenVPN
v2.6.14 (file and symbol or function). IV_PROTO bits live in ``key_method.IvProto``.
"""

from __future__ import annotations

from enum import IntEnum

# ==========================================================================================
# Spec constants
# ==========================================================================================


class Opcode(IntEnum):
    """Packet opcodes, the high 5 bits of the first byte (ssl_pkt.h P_*)."""

    CONTROL_HARD_RESET_CLIENT_V1 = 1  # key-method 1, removed in 2.5
    CONTROL_HARD_RESET_SERVER_V1 = 2  # key-method 1, removed in 2.5
    CONTROL_SOFT_RESET_V1 = 3
    CONTROL_V1 = 4
    ACK_V1 = 5
    DATA_V1 = 6
    CONTROL_HARD_RESET_CLIENT_V2 = 7
    CONTROL_HARD_RESET_SERVER_V2 = 8
    DATA_V2 = 9
    CONTROL_HARD_RESET_CLIENT_V3 = 10  # tls-crypt-v2: WKc appended in clear
    CONTROL_WKC_V1 = 11  # tls-crypt-v2 cookie mode: CONTROL_V1 with WKc appended


P_OPCODE_SHIFT = 3  # ssl_pkt.h P_OPCODE_SHIFT
P_KEY_ID_MASK = 0x07  # ssl_pkt.h P_KEY_ID_MASK
KEY_ID_COUNT = 8  # 3-bit key_id; 0 is skipped on wrap (ssl.c key_state_init)

#: Control opcodes a 2.6 peer accepts (ssl_pkt.h P_FIRST_OPCODE..P_LAST_OPCODE minus data).
CONTROL_OPCODES = frozenset(
    {
        Opcode.CONTROL_SOFT_RESET_V1,
        Opcode.CONTROL_V1,
        Opcode.ACK_V1,
        Opcode.CONTROL_HARD_RESET_CLIENT_V2,
        Opcode.CONTROL_HARD_RESET_SERVER_V2,
        Opcode.CONTROL_HARD_RESET_CLIENT_V3,
        Opcode.CONTROL_WKC_V1,
    }
)
DATA_OPCODES = frozenset({Opcode.DATA_V1, Opcode.DATA_V2})
#: Hard resets start a session; their message id is always 0 (ssl.c tls_pre_decrypt).
HARD_RESET_OPCODES = frozenset(
    {
        Opcode.CONTROL_HARD_RESET_CLIENT_V2,
        Opcode.CONTROL_HARD_RESET_SERVER_V2,
        Opcode.CONTROL_HARD_RESET_CLIENT_V3,
    }
)
#: Opcodes whose packet ends with a tls-crypt-v2 wrapped client key (ssl_pkt.c).
WKC_OPCODES = frozenset({Opcode.CONTROL_HARD_RESET_CLIENT_V3, Opcode.CONTROL_WKC_V1})

SESSION_ID_LEN = 8  # session_id.h SID_SIZE
MESSAGE_ID_LEN = 4  # reliable.h packet_id_type (u32)
MAX_ACKS_PER_PACKET = 8  # reliable.h RELIABLE_ACK_SIZE: a 2.6 peer rejects more

PEER_ID_LEN = 3  # ssl.c tls_prepend_opcode_v2: 24-bit peer-id
PEER_ID_UNDEF = 0xFFFFFF  # "no peer-id" (openvpn3 openvpn-protocol-extensions.txt)
DATA_V1_HEADER_LEN = 1
DATA_V2_HEADER_LEN = 4

# -- replay packet ids (packet_id.h) -------------------------------------------------------
PACKET_ID_LEN = 4  # short form: data channel AEAD
PACKET_ID_LONG_LEN = 8  # long form: u32 counter + u32 time, tls-auth / tls-crypt
PACKET_ID_WRAP_TRIGGER = 0xFF000000  # packet_id.h: renegotiate before the counter wraps
PACKET_ID_MAX = 0xFFFFFFFF

# -- tls-crypt (tls_crypt.h) ---------------------------------------------------------------
TLS_CRYPT_TAG_LEN = 32  # TLS_CRYPT_TAG_SIZE, HMAC-SHA256
TLS_CRYPT_CIPHER_KEY_LEN = 32  # AES-256-CTR
TLS_CRYPT_HMAC_KEY_LEN = 32  # HMAC-SHA256
TLS_CRYPT_HEADER_LEN = 1 + SESSION_ID_LEN + PACKET_ID_LONG_LEN  # 17, authenticated in clear
TLS_CRYPT_OVERHEAD = TLS_CRYPT_HEADER_LEN + TLS_CRYPT_TAG_LEN  # 49 before the ciphertext
STATIC_KEY_LEN = 256  # crypto.h struct key2: two directional 128-byte keys
KEY_SLOT_LEN = 64  # crypto.h MAX_CIPHER_KEY_LENGTH / MAX_HMAC_KEY_LENGTH

# -- tls-crypt-v2 (tls_crypt.h, doc/tls-crypt-v2.txt) --------------------------------------
TLS_CRYPT_V2_SERVER_KEY_LEN = 128
TLS_CRYPT_V2_MAX_WKC_LEN = 1024  # TLS_CRYPT_V2_MAX_WKC_LEN
TLS_CRYPT_V2_LEN_FIELD = 2  # trailing u16 length of WKc, counting itself
TLS_CRYPT_V2_MIN_WKC_LEN = TLS_CRYPT_TAG_LEN + STATIC_KEY_LEN + TLS_CRYPT_V2_LEN_FIELD
#: A 2.6 client starts its tls-crypt-v2 replay counter here to say "I do early negotiation"
#: (ssl_pkt.h EARLY_NEG_START); the first V3 reset then carries 0x0F000001.
EARLY_NEG_START = 0x0F000000
EARLY_NEG_MASK = 0xFF000000  # ssl_pkt.h EARLY_NEG_MASK
TLV_TYPE_EARLY_NEG_FLAGS = 0x0001  # ssl_pkt.h TLV_TYPE_EARLY_NEG_FLAGS
EARLY_NEG_FLAG_RESEND_WKC = 0x0001  # ssl_pkt.h EARLY_NEG_FLAG_RESEND_WKC

# -- data-channel key derivation (ssl.c generate_key_expansion*, ssl_backend.h) ------------
KEY_EXPANSION_LEN = STATIC_KEY_LEN  # the key2 block: 256 bytes
PRE_MASTER_LEN = 48  # ssl.c key_source.pre_master
RANDOM_LEN = 32  # ssl.c key_source.random1/random2
MASTER_SECRET_LEN = 48  # ssl.c generate_key_expansion_openvpn_prf
PRF_LABEL_MASTER = b"OpenVPN master secret"  # ssl.c KEY_EXPANSION_ID " master secret"
PRF_LABEL_EXPANSION = b"OpenVPN key expansion"  # ssl.c KEY_EXPANSION_ID " key expansion"
EKM_LABEL_DATA_KEYS = "EXPORTER-OpenVPN-datakeys"  # ssl_backend.h EXPORT_KEY_DATA_LABEL

# -- AEAD data channel (crypto.c openvpn_encrypt_aead) -------------------------------------
AEAD_TAG_LEN = 16  # OPENVPN_AEAD_TAG_LENGTH
AEAD_NONCE_LEN = 12
IMPLICIT_IV_LEN = AEAD_NONCE_LEN - PACKET_ID_LEN  # 8, from the HMAC slot

# -- plaintext payloads (ping.h, occ.h, comp.h) --------------------------------------------
PING_MAGIC = bytes.fromhex("2a187bf3641eb4cb07ed2d0a981fc748")  # ping.c ping_string
OCC_MAGIC = bytes.fromhex("287f346bd4ef7a812d56b8d3afc5459c")  # occ.c occ_magic


class OccOpcode(IntEnum):
    """The byte after OCC_MAGIC (occ.h OCC_*)."""

    REQUEST = 0
    REPLY = 1
    MTU_LOAD_REQUEST = 2
    MTU_LOAD = 3
    MTU_REQUEST = 4
    MTU_REPLY = 5
    EXIT = 6


NO_COMPRESS_BYTE = 0xFA  # comp.h NO_COMPRESS_BYTE: comp-lzo stub, packet follows
LZO_COMPRESS_BYTE = 0x66  # comp.h LZO_COMPRESS_BYTE: LZO data (refused)
NO_COMPRESS_BYTE_SWAP = 0xFB  # comp.h NO_COMPRESS_BYTE_SWAP: "compress stub" swap form
LZ4_COMPRESS_BYTE = 0x69  # comp.h LZ4_COMPRESS_BYTE (refused)
COMP_ALGV2_INDICATOR_BYTE = 0x50  # comp.h COMP_ALGV2_INDICATOR_BYTE: stub-v2 escape
COMP_ALGV2_UNCOMPRESSED = 0x00  # comp.h COMP_ALGV2_UNCOMPRESSED

# ==========================================================================================
# Tuning constants (OpenVPN defaults unless noted)
# ==========================================================================================

TLS_RELIABLE_N_SEND_BUFFERS = 6  # ssl_pkt.h: packets in flight per key state
TLS_RELIABLE_N_REC_BUFFERS = 12  # ssl_pkt.h: receive window; beyond it: drop, no ACK
CONTROL_SEND_ACK_MAX = 4  # ssl.h: ACKs piggy-backed on a reliable packet
RELIABLE_ACK_SEND_MAX = MAX_ACKS_PER_PACKET  # ACKs in a bare P_ACK_V1 (reliable.h)
N_ACK_RETRANSMIT = 3  # reliable.h: later-ACK hints before a fast retransmit
TLS_TIMEOUT = 2.0  # options.c tls_timeout default: first retransmit after 2 s, doubling
TLS_TIMEOUT_MAX = 60.0  # our cap on the doubled retransmit interval
TLS_MTU = 1250  # mtu.h TLS_MTU_DEFAULT: largest control datagram we send
HAND_WINDOW = 60.0  # options.c handshake_window default, seconds
REPLAY_WINDOW = 64  # packet_id.h DEFAULT_SEQ_BACKTRACK
REPLAY_TIME = 15.0  # packet_id.h DEFAULT_TIME_BACKTRACK, seconds
TCP_MAX_PACKET = 4096  # ours: TCP frames above this close the stream (socket.c "Bogus
#                        packet size"); 2.6 sends <= 1250 control, ~1550 data bytes

# OpenVPN's tls-groups, in OpenSSL's names: the hybrid post-quantum group first, so a client
# that offers it (OpenVPN 2.7 or Connect on OpenSSL >= 3.5 or AWS-LC) gets a key exchange
# a future quantum computer cannot break; X25519 and P-256 for every other client.
DEFAULT_TLS_GROUPS = "X25519MLKEM768:X25519:P-256"
