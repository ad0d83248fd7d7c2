"""IKEv2 numbers from the IANA "IKEv2 Parameters" registry, and this core's tuning knobs.

Spec constants (wire values; RFC 7296 section 3 unless noted) come first, tuning constants
(timers, limits, sizes we choose) after them, so a reader never mistakes one for the other.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

# -- spec constants ------------------------------------------------------------------------

IKE_VERSION = 0x20  # major 2, minor 0 (RFC 7296 section 3.1)
IKE_HEADER_LENGTH = 28
GENERIC_PAYLOAD_HEADER_LENGTH = 4
NON_ESP_MARKER = b"\x00\x00\x00\x00"  # RFC 3948 section 2.2: IKE on port 4500
NAT_KEEPALIVE = b"\xff"  # RFC 3948 section 2.3
IKE_PORT = 500
NAT_T_PORT = 4500
KEY_PAD = b"Key Pad for IKEv2"  # RFC 7296 section 2.15
ATTRIBUTE_TV_FLAG = 0x8000  # RFC 7296 section 3.3.5: TV format bit


class ExchangeType(IntEnum):
    IKE_SA_INIT = 34
    IKE_AUTH = 35
    CREATE_CHILD_SA = 36
    INFORMATIONAL = 37
    IKE_INTERMEDIATE = 43  # RFC 9242
    IKE_FOLLOWUP_KE = 44  # RFC 9370 §2.2.4: additional key exchanges of a rekey


class HeaderFlag(IntFlag):
    INITIATOR = 0x08
    VERSION = 0x10
    RESPONSE = 0x20


class PayloadType(IntEnum):
    NONE = 0
    SA = 33
    KE = 34
    IDI = 35
    IDR = 36
    CERT = 37
    CERTREQ = 38
    AUTH = 39
    NONCE = 40
    NOTIFY = 41
    DELETE = 42
    VENDOR = 43
    TSI = 44
    TSR = 45
    SK = 46
    CP = 47
    EAP = 48
    SKF = 53


class ProtocolId(IntEnum):
    NONE = 0
    IKE = 1
    AH = 2
    ESP = 3


class TransformType(IntEnum):
    ENCR = 1
    PRF = 2
    INTEG = 3
    DH = 4  # "Key Exchange Method" since RFC 9370
    ESN = 5
    # RFC 9370: Additional Key Exchange 1..7, each negotiated like DH, run in IKE_INTERMEDIATE
    ADDKE1 = 6
    ADDKE2 = 7
    ADDKE3 = 8
    ADDKE4 = 9
    ADDKE5 = 10
    ADDKE6 = 11
    ADDKE7 = 12


class EncrId(IntEnum):
    AES_CBC = 12
    AES_CTR = 13
    AES_GCM_8 = 18
    AES_GCM_12 = 19
    AES_GCM_16 = 20
    CHACHA20_POLY1305 = 28


class PrfId(IntEnum):
    HMAC_SHA1 = 2
    HMAC_SHA2_256 = 5
    HMAC_SHA2_384 = 6
    HMAC_SHA2_512 = 7


class IntegId(IntEnum):
    NONE = 0
    HMAC_SHA1_96 = 2
    AES_XCBC_96 = 5
    HMAC_SHA2_256_128 = 12
    HMAC_SHA2_384_192 = 13
    HMAC_SHA2_512_256 = 14


class DhGroup(IntEnum):
    NONE = 0
    MODP_2048 = 14
    MODP_3072 = 15
    MODP_4096 = 16
    ECP_256 = 19
    ECP_384 = 20
    ECP_521 = 21
    CURVE25519 = 31
    CURVE448 = 32
    ML_KEM_768 = 36  # draft-ietf-ipsecme-ikev2-mlkem (as strongSwan 6): a KEM, not DH


class EsnId(IntEnum):
    NO_ESN = 0
    ESN = 1


class TransformAttribute(IntEnum):
    KEY_LENGTH = 14


class AuthMethod(IntEnum):
    RSA_SIG = 1
    SHARED_KEY_MIC = 2
    DSS_SIG = 3
    DIGITAL_SIGNATURE = 14


class IdType(IntEnum):
    IPV4_ADDR = 1
    FQDN = 2
    RFC822_ADDR = 3
    IPV6_ADDR = 5
    DER_ASN1_DN = 9
    KEY_ID = 11


class TsType(IntEnum):
    IPV4_ADDR_RANGE = 7
    IPV6_ADDR_RANGE = 8


class NotifyType(IntEnum):
    # error types (RFC 7296 section 3.10.1)
    UNSUPPORTED_CRITICAL_PAYLOAD = 1
    INVALID_IKE_SPI = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_SYNTAX = 7
    INVALID_MESSAGE_ID = 9
    INVALID_SPI = 11
    NO_PROPOSAL_CHOSEN = 14
    INVALID_KE_PAYLOAD = 17
    AUTHENTICATION_FAILED = 24
    SINGLE_PAIR_REQUIRED = 34
    NO_ADDITIONAL_SAS = 35
    INTERNAL_ADDRESS_FAILURE = 36
    FAILED_CP_REQUIRED = 37
    TS_UNACCEPTABLE = 38
    INVALID_SELECTORS = 39
    TEMPORARY_FAILURE = 43
    CHILD_SA_NOT_FOUND = 44
    STATE_NOT_FOUND = 47  # RFC 9370: an IKE_FOLLOWUP_KE whose link we do not know
    # status types
    INITIAL_CONTACT = 16384
    SET_WINDOW_SIZE = 16385
    NAT_DETECTION_SOURCE_IP = 16388
    NAT_DETECTION_DESTINATION_IP = 16389
    COOKIE = 16390
    USE_TRANSPORT_MODE = 16391
    REKEY_SA = 16393
    ESP_TFC_PADDING_NOT_SUPPORTED = 16394
    MOBIKE_SUPPORTED = 16396
    MULTIPLE_AUTH_SUPPORTED = 16404
    REDIRECT_SUPPORTED = 16406
    EAP_ONLY_AUTHENTICATION = 16417
    CHILDLESS_IKEV2_SUPPORTED = 16418
    IKEV2_MESSAGE_ID_SYNC_SUPPORTED = 16420
    IKEV2_FRAGMENTATION_SUPPORTED = 16430
    SIGNATURE_HASH_ALGORITHMS = 16431
    INTERMEDIATE_EXCHANGE_SUPPORTED = 16438  # RFC 9242
    ADDITIONAL_KEY_EXCHANGE = 16441  # RFC 9370: links a rekey to its IKE_FOLLOWUP_KE


ERROR_NOTIFY_LIMIT = 16384  # notify types below this are errors (RFC 7296 section 3.10.1)

# -- tuning constants ----------------------------------------------------------------------

NONCE_LENGTH = 32
MIN_NONCE_LENGTH = 16  # RFC 7296 section 3.9
MAX_NONCE_LENGTH = 256
RETRANSMIT_BASE = 4.0  # seconds; strongSwan's retransmit_timeout
RETRANSMIT_FACTOR = 1.8  # strongSwan's retransmit_base
RETRANSMIT_TRIES = 5
RETRANSMIT_LIMIT = 20.0  # longest wait between two sends (strongSwan: unlimited, up to 75 s)
HALF_OPEN_TIMEOUT = 30.0  # strongSwan's half_open_timeout
DEFAULT_IKE_REKEY_TIME = 14400.0
DEFAULT_IKE_REKEY_JITTER = 1440.0
DEFAULT_CHILD_REKEY_TIME = 3600.0
DEFAULT_CHILD_LIFE_TIME = 3960.0
DEFAULT_CHILD_REKEY_JITTER = 360.0
DEFAULT_DPD_DELAY = 30.0
DEFAULT_DPD_TIMEOUT = 30.0  # an unanswered request on an established SA declares it dead
REKEY_RETRY_DELAY = 2.0  # after TEMPORARY_FAILURE from a colliding exchange
REKEY_REFUSED_DELAY = 30.0  # an IKE rekey the peer refused or botched is tried again after
# Bounds checked before a message is parsed (strongSwan's max_packet is 10,000 bytes; its
# own messages to a PSK peer carry at most a dozen payloads, Windows adds a few vendor IDs).
MAX_MESSAGE_LENGTH = 10_000
MAX_PAYLOADS = 32  # per chain: the message body, or the inside of SK
# Who may make us keep state (admission.py); strongSwan 5.9's defaults where it has one.
COOKIE_THRESHOLD = 30  # half-open SAs in all that switch cookies on for every initiator
COOKIE_THRESHOLD_IP = 3  # half-open SAs of one address that switch cookies on for it
COOKIE_CALM_DOWN = 10.0  # seconds cookies stay required after the count fell again
COOKIE_SECRET_LIFETIME = 10.0  # seconds; the previous secret stays valid as long again
MAX_HALF_OPEN_PER_PEER = 8  # unauthenticated responder SAs kept per peer; oldest evicted
AUTH_FAILURE_BURST = 5  # failed authentications one source (address, port) may have at once
AUTH_FAILURE_INTERVAL = 10.0  # seconds that earn a throttled source one more attempt
MAX_TRACKED_SOURCES = 4096  # addresses remembered for cookie calm-down and the throttle
