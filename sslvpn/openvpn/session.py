"""The server-role OpenVPN session: the object the runtime drives for one client.

Created from the acceptor's ``CreateSession`` (server.py). It runs TLS as the server on
every key_id, reads the client's key-method 2 record, checks the client certificate
(chain to our CA, expiry, EKU clientAuth: the CA is an input, revocation is the caller's),
negotiates the data cipher, answers with its own record and then *waits*: it emits
``PeerVerified`` and the caller decides with ``accept(push_config)`` or ``reject(reason)``.
On accept it derives the data keys (PRF or EKM), sends PUSH_REPLY and reports
``SessionEstablished``. The PUSH_REPLY goes out on the client's PUSH_REQUEST, or unasked
to an IV_PROTO request-push client once it ACKed everything we sent (our key-method 2
record included): as the 2.6 server waits for S_ACTIVE (multi.c
multi_connection_established). Sent earlier, a lossy link makes OpenVPN 3 lose it for
good: a message that arrives before its own messages were all ACKed stays unread in its
buffer (proto.hpp KeyContext::app_recv, state C_WAIT_AUTH_ACK) and spoils the next one.
A PUSH_REQUEST that comes after the client ACKed the PUSH_REPLY means it dropped the
reply, so it gets the reply again, until the handshake window ends. Renegotiations
(either side) re-check the certificate, which must stay the same, and never push again.
A refusal sends ``AUTH_FAILED,<reason>`` (timed and repeated like an unasked PUSH_REPLY)
and closes after a short linger (push.c send_auth_failed, schedule_exit); a temporary one
(the caller's store did not answer) sends ``AUTH_FAILED,TEMP[backoff N]:<reason>`` to
clients that parse it.
The decision may come long after ``PeerVerified`` (the caller asked a store): meanwhile the
session keeps acknowledging and holds back the PUSH_REPLY the client asks for.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from cryptography import x509

from sslvpn.openvpn.constants import Opcode
from sslvpn.openvpn.endpoint import (
    Endpoint,
    LocalProtocolError,
    Rand,
    Timing,
    local_key_method,
)
from sslvpn.openvpn.events import (
    ControlMessageReceived,
    ExitRequested,
    PeerRefused,
    PeerVerified,
    SessionEstablished,
)
from sslvpn.openvpn.key_method import (
    IvProto,
    KeyMethod2,
    KeyMethodError,
    PeerInfo,
    occ_echoed_cipher,
    occ_options_string,
    occ_wants_compression_framing,
    parse_peer_info,
    pull_key_method2,
    push_key_method2,
)
from sslvpn.openvpn.key_state import Identity, KeyState
from sslvpn.openvpn.packet import ControlPacket
from sslvpn.openvpn.push import (
    SUPPORTED_CIPHERS,
    PushConfig,
    build_push_reply,
    choose_compression,
    choose_key_derivation,
    negotiate_cipher,
    push_options,
)
from sslvpn.openvpn.server import CreateSession
from sslvpn.openvpn.tls import TlsContext, client_auth_problem
from sslvpn.openvpn.tls_wrap import ControlWrap, TlsCryptCodec

_CLIENT_RESETS = frozenset(
    {Opcode.CONTROL_HARD_RESET_CLIENT_V2, Opcode.CONTROL_HARD_RESET_CLIENT_V3})
NO_SHARED_CIPHER = "Data channel cipher negotiation failed (no shared cipher)"  # ssl_ncp.c


@dataclass(frozen=True)
class ServerConfig:
    """Per-listener settings every server session shares."""

    tls: TlsContext
    tcp: bool = False
    data_ciphers: tuple[str, ...] = SUPPORTED_CIPHERS
    allow_ekm: bool = True
    timing: Timing = Timing()
    ping_restart_factor: float = 2.0  # helper.c: keepalive 10 60 -> server restarts at 120


def _fingerprint(cert: x509.Certificate) -> bytes:
    """Identity of a chain-verified certificate for the renegotiation check.

    Our CA's signature covers the whole certificate, so two verified certificates with
    the same signature are the same certificate; hashing it avoids re-encoding the DER.
    """
    return hashlib.blake2b(cert.signature, digest_size=32).digest()


def _printable(reason: str) -> str:
    cleaned = "".join(c if c.isprintable() else " " for c in reason)
    return cleaned[:200]


class ServerSession(Endpoint):
    """One client connection, server role; see the module docstring for the life cycle.

    Idle sessions are what a gateway holds by the thousand: the session keeps the client
    certificate as a fingerprint, the peer-info as its IV_PROTO flags and the push as
    rendered messages only until the handshake window ends.
    """

    __slots__ = ("config", "metadata", "peer_proto", "_peer_info", "_fingerprint", "_answer",
                 "_awaiting_decision", "_decided", "_push_requested", "_answer_start",
                 "_answer_end", "_unasked", "_own_codec")

    def __init__(
        self,
        config: ServerConfig,
        created: CreateSession,
        now: float,
        *,
        rand: Rand = os.urandom,
    ) -> None:
        if not config.tls.server:
            raise LocalProtocolError("a server session needs a server TLS context")
        wrap = ControlWrap(
            created.codec, timestamp=created.timestamp, last_packet_id=created.last_packet_id
        )
        if created.first_replay_id != (0, 0):
            wrap.accept_replay_id(*created.first_replay_id)
        identity = Identity(own=created.server_session_id, peer=created.client_session_id)
        super().__init__(
            tls_context=config.tls, wrap=wrap, identity=identity, timing=config.timing,
            now=now, rand=rand,
        )
        self.config = config
        self.metadata = created.metadata
        # tls-crypt-v2 (the only mode with metadata): a codec made for this client alone,
        # whose OpenSSL contexts are freed while the session idles.
        codec = created.codec
        per_client = created.metadata is not None
        self._own_codec = codec if per_client and isinstance(codec, TlsCryptCodec) else None
        self.peer_proto = IvProto(0)  # the client's IV_PROTO flags, once it was verified
        self._peer_info: PeerInfo | None = None  # kept only while the caller decides
        self._fingerprint: bytes | None = None  # see _fingerprint
        # what a PUSH_REQUEST gets (PUSH_REPLY parts or AUTH_FAILED), kept to answer again
        self._answer: list[str] | None = None
        self._awaiting_decision = False
        self._decided = False
        self._push_requested = False
        self._answer_start = 0  # message id of the last answer's first message
        self._answer_end: int | None = None  # message id after the last answer sent
        self._unasked = False  # the answer may go without a PUSH_REQUEST
        ks = self._new_key_state(0, now)
        if created.reset_done:
            ks.sender.skip_to(1)
            ks.receiver.skip_to(1)
        else:
            ks.sender.queue(Opcode.CONTROL_HARD_RESET_SERVER_V2)
            # UDP without the cookie: the source may be forged, so no retransmission to it
            # until it answered (a repeated reset is answered once per copy)
            ks.sender.answer_only = not config.tcp
        self._handle_control(created.first, now)

    def __repr__(self) -> str:
        return f"ServerSession(sid={self.identity.own.hex()}, closed={self.closed})"

    def handle_timer(self, now: float) -> None:
        """Fire what is due; an established session that negotiates nothing trims its codec
        and, once the client's handshake window is over, forgets its PUSH_REPLY."""
        super().handle_timer(now)
        if self._own_codec is not None and self.established and self._negotiating() is None:
            self._own_codec.trim()
        first = self._keys.get(0)
        if self._answer_end is not None and (first is None or now >= first.deadline):
            self._answer = None

    def _handle_control(self, packet: ControlPacket, now: float) -> None:
        super()._handle_control(packet, now)
        first = self._keys.get(0)
        if first is not None and not self.closed:
            self._answer_when_ready(first)  # the packet may have ACKed our last message

    # -- key-method 2 and certificate checks ---------------------------------------------
    def _on_key_method(self, ks: KeyState, record: bytes, now: float) -> None:
        try:
            peer = pull_key_method2(record, from_client=True)
        except KeyMethodError as exc:
            self._drop("key-method")
            self._key_failed(ks, f"bad key-method 2 record: {exc}")
            return
        ks.peer_km2 = peer
        ks.km2_received()
        occ = occ_options_string(
            server=True, tcp=self.config.tcp,
            compression=occ_wants_compression_framing(peer.options),
            cipher=occ_echoed_cipher(peer.options),
        )
        ks.local_km2 = local_key_method(self._rand, occ, client=False)
        ks.send_record(push_key_method2(ks.local_km2))
        cert, problem = self._check_certificate(ks)
        if ks.key_id == 0 and not self._decided and not self._awaiting_decision:
            self._first_key_ready(ks, peer, cert, problem, now)
        elif problem is not None:
            self._refuse(ks, problem, now)
        else:
            self._install(ks, now)

    def _check_certificate(self, ks: KeyState) -> tuple[x509.Certificate | None, str | None]:
        """The client's leaf and why it is unacceptable (None: it is fine)."""
        cert = ks.tls.peer_certificate()
        if ks.tls.verify_error is not None:
            return cert, ks.tls.verify_error
        if cert is None:
            return None, "no client certificate"
        if self._fingerprint is not None and _fingerprint(cert) != self._fingerprint:
            return cert, "client certificate changed during renegotiation"
        return cert, client_auth_problem(cert)

    def _first_key_ready(
        self, ks: KeyState, peer: KeyMethod2, cert: x509.Certificate | None,
        problem: str | None, now: float,
    ) -> None:
        info = parse_peer_info(peer.peer_info)
        if problem is not None or cert is None:
            self._refuse(ks, problem or "no client certificate", now)
            return
        cipher = negotiate_cipher(info, self.config.data_ciphers)
        if cipher is None:
            self._refuse(ks, NO_SHARED_CIPHER, now)
            return
        self.cipher = cipher
        self.derivation = choose_key_derivation(info, allow_ekm=self.config.allow_ekm)
        self.compression = choose_compression(
            info, occ_has_comp_lzo=occ_wants_compression_framing(peer.options)
        )
        self.peer_proto = info.proto
        self._peer_info = info
        self._fingerprint = _fingerprint(cert)
        self._awaiting_decision = True
        self._events.append(
            PeerVerified(cert, info, peer.username, peer.password, tls_group=ks.tls.group))

    def _refuse(self, ks: KeyState, reason: str, now: float) -> None:
        """The core refuses by itself: tell the caller, then AUTH_FAILED and linger."""
        self._events.append(PeerRefused(reason))
        self._send_auth_failed(ks, reason, now)

    def _send_auth_failed(self, ks: KeyState, reason: str, now: float) -> None:
        self._decided = True
        self._awaiting_decision = False
        self._peer_info = None
        message = "AUTH_FAILED," + _printable(reason)
        if ks.key_id != 0 or self._answer_end is not None:
            ks.send_message(message)  # a renegotiation: the client is long active
        else:
            self._answer, self._unasked = [message], True
            self._answer_when_ready(ks)
        self._linger("auth failed: " + reason, now)

    # -- the caller's decision -----------------------------------------------------------
    def accept(self, push_config: PushConfig, now: float | None = None) -> None:
        """Admit the verified peer: derive keys, push its configuration. ``now`` matters
        when the decision came later than the last input (the caller asked a store)."""
        if not self._awaiting_decision or self.closed:
            raise LocalProtocolError("accept() is only valid after PeerVerified")
        self._now = self._now if now is None else now
        ks, info = self._keys.get(0), self._peer_info
        if ks is None or info is None:
            raise LocalProtocolError("the first key state is gone")
        self._peer_info = None
        self._awaiting_decision = False
        self._decided = True
        self.data_peer_id = push_config.peer_id if info.supports(IvProto.DATA_V2) else None
        self._answer = build_push_reply(push_options(
            push_config, peer=info, cipher=self.cipher, derivation=self.derivation,
            compression=self.compression,
        ))
        self._install(ks, self._now)
        self.ping_interval = float(push_config.ping)
        self.ping_timeout = push_config.ping_restart * self.config.ping_restart_factor
        self.last_received = self._now
        self._unasked = info.supports(IvProto.REQUEST_PUSH)
        self._answer_when_ready(ks)
        self._events.append(
            SessionEstablished(
                cipher=self.cipher,
                key_derivation=self.derivation.value,
                peer_id=push_config.peer_id,
                tls_version=ks.tls.version,
                tls_group=ks.tls.group,
            )
        )

    def reject(self, reason: str, now: float | None = None, *,
               retry_after: int | None = None) -> None:
        """Refuse the verified peer with ``AUTH_FAILED,<reason>`` (logged by the caller).

        With ``retry_after`` (seconds) the refusal is temporary: a client that announced
        IV_PROTO_AUTH_FAIL_TEMP gets ``AUTH_FAILED,TEMP[backoff N]:<reason>`` and tries again
        after N s (push.c receive_auth_failed, options_util.c parse_auth_failed_temp; openvpn3
        cliproto.hpp). Any other client would stop for good on an AUTH_FAILED, so it is told
        nothing: the session just ends, and the client, left without a PUSH_REPLY, starts
        over by itself when its handshake window runs out.
        """
        ks = self._keys.get(0)
        if not self._awaiting_decision or self.closed or ks is None:
            raise LocalProtocolError("reject() is only valid after PeerVerified")
        self._now = self._now if now is None else now
        if retry_after is None:
            self._send_auth_failed(ks, reason, self._now)
        elif self.peer_proto & IvProto.AUTH_FAIL_TEMP:
            self._send_auth_failed(ks, f"TEMP[backoff {retry_after}]:{reason}", self._now)
        else:
            self._decided = True
            self._awaiting_decision = False
            self._peer_info = None
            self._finish(f"refused for now, without an answer: {reason}")

    def _answer_when_ready(self, ks: KeyState) -> None:
        """The first answer: asked for, or unasked once the client holds all we sent."""
        if self._answer is None or self._answer_end is not None:
            return
        if self._push_requested or (self._unasked and ks.sender.all_acked()):
            self._send_answer(ks)

    def _on_push_request(self, ks: KeyState, now: float) -> None:
        """A PUSH_REQUEST proves the client is active; answered again once the last answer
        was ACKed. An answer still in flight goes again at once, as the same messages (the
        client never reads two copies): the client asking again means it lacks it, and the
        2.6 server answers every PUSH_REQUEST anew (push.c process_incoming_push_request),
        so a lost reply costs the client's next ask there, not a retransmission timeout."""
        self._push_requested = True
        end = self._answer_end
        if end is None:
            self._answer_when_ready(ks)
        elif self._answer is not None and ks.sender.delivered(end):
            self._send_answer(ks)
        elif self._answer is not None:
            for message_id in range(self._answer_start, end):
                ks.sender.resend(message_id, now)

    def _send_answer(self, ks: KeyState) -> None:
        self._answer_start = ks.sender.next_message_id
        for message in self._answer or ():
            ks.send_message(message)
        self._answer_end = ks.sender.next_message_id

    # -- control messages ----------------------------------------------------------------
    def _on_message(self, ks: KeyState, message: str, now: float) -> None:
        if message == "PUSH_REQUEST":
            self._on_push_request(ks, now)
        elif message == "EXIT":
            self._events.append(ExitRequested("control"))
            self._finish("peer exited (EXIT)")
        else:
            self._events.append(ControlMessageReceived(message))

    def _say_goodbye(self) -> None:
        # multi.c: on shutdown the server tells clients to reconnect; clients that do
        # not read control messages (no cc-exit) also get the OCC EXIT data packet.
        ks = self._send_key  # a key state whose TLS session is up
        if ks is not None and self._answer_end is not None:
            ks.send_message("RESTART")
        if not self.peer_proto & IvProto.CC_EXIT_NOTIFY:
            self._send_occ_exit()

    def _before_receive(self, ks: KeyState, packet: ControlPacket, now: float) -> bool:
        if packet.opcode is Opcode.CONTROL_HARD_RESET_SERVER_V2:
            self._drop("server-reset-from-client")
            return False
        if ks.sender.answer_only:
            if packet.acks:  # it knows our session id: the address is the client's
                ks.sender.answer_only = False
            elif packet.opcode in _CLIENT_RESETS and packet.message_id == 0:
                ks.sender.resend(0, now)
        return True
