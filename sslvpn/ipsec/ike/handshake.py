"""IKE_SA_INIT and IKE_AUTH with PSK, both roles (RFC 7296 §1.2, §2.15, §2.23).

Initiator: INIT request (retried for INVALID_KE_PAYLOAD with the same SPIi, or with a
COOKIE), then IKE_AUTH on 4500 carrying the first CHILD_SA. Responder: answers INIT
(NO_PROPOSAL_CHOSEN / INVALID_KE_PAYLOAD without keeping state), then verifies IKE_AUTH
and answers with its AUTH and the narrowed CHILD_SA. AUTH signs the exact INIT bytes.

When the chosen IKE proposal has additional key exchanges (RFC 9370, e.g. ML-KEM-768),
one IKE_INTERMEDIATE exchange (RFC 9242) per method runs between INIT and AUTH: the
initiator sends KE(encapsulation key), the responder KE(ciphertext); each side then sets
SKEYSEED(n) = prf(SK_d(n-1), SK(n) | Ni | Nr) and derives all SK_* anew. AUTH also covers
IntAuth_i | IntAuth_r | the IKE_AUTH message ID, chained over those exchanges.
"""

from __future__ import annotations

import hmac
from typing import TypeVar

from . import constants as c
from .base import Address, Drop, IkeState, SaBase
from .child import ChildParams, ChildSa, jitter, make_child, new_spi
from .config import Identity
from .constants import AuthMethod, ExchangeType, NotifyType, ProtocolId
from .cookies import stateless_answer
from .crypto import (
    CryptoError,
    KemExchange,
    derive_ike_keys,
    int_auth,
    kem_encapsulate,
    psk_auth,
    rekey_skeyseed,
    skeyseed,
)
from .events import (
    AuthenticationFailed,
    ChildSaFailed,
    IkeSaEstablished,
    NoProposalChosen,
)
from .messages import (
    AuthPayload,
    IdPayload,
    IkeHeader,
    KePayload,
    Message,
    NoncePayload,
    NotifyPayload,
    Payload,
    SaPayload,
    TsPayload,
    find,
    notifies,
    unsupported_critical,
)
from .proposals import accept_answer, answer_proposal, build_proposals, select
from .traffic_selectors import is_subset, narrow
from .window import ZERO_SPI, IkeContext, RequestState

_P = TypeVar("_P")


def _one(payloads: list[Payload], kind: type[_P], what: str) -> _P:
    found = find(payloads, kind)
    if not found:
        raise Drop(f"{what} payload missing", "malformed")
    return found[0]


def nonce_of(payloads: list[Payload]) -> bytes:
    nonce = _one(payloads, NoncePayload, "Nonce")
    if not c.MIN_NONCE_LENGTH <= len(nonce.data) <= c.MAX_NONCE_LENGTH:
        raise Drop("nonce length out of range", "malformed")
    return nonce.data


class Handshake(SaBase):
    """The two initial exchanges; ends in ESTABLISHED or CLOSED."""

    # -- initiator ---------------------------------------------------------------------

    def _start_init(self, now: float) -> None:
        if not self._ke_group:
            self._ke_group = self.config.ike_proposals[0].dhs[0]
        if self._dh is None or self._dh.group != self._ke_group:
            self._dh = self._new_dh(self._ke_group)
        if not self._ni:
            self._ni = self._nonce()
        payloads: list[Payload] = []
        if self._cookie:
            payloads.append(NotifyPayload(NotifyType.COOKIE, self._cookie))
        payloads += [
            SaPayload(build_proposals(list(self.config.ike_proposals), b"")),
            KePayload(self._ke_group, self._dh.public),
            NoncePayload(self._ni),
            NotifyPayload(
                NotifyType.NAT_DETECTION_SOURCE_IP,
                self._natd(ZERO_SPI, self.local_addr, self.config.force_encap),
            ),
            NotifyPayload(
                NotifyType.NAT_DETECTION_DESTINATION_IP,
                self._natd(ZERO_SPI, self.remote_addr, False),
            ),
        ]
        if any(spec.addkes for spec in self.config.ike_proposals):
            payloads.append(NotifyPayload(NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED))
        payloads.append(NotifyPayload(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))  # RFC 7383
        self._ctx.next_request_id = 0
        self._send_request(self._ctx, ExchangeType.IKE_SA_INIT, payloads, "init", now)
        self._init_request = self._ctx.pending.data if self._ctx.pending else b""
        self.state = IkeState.INIT_SENT

    def _on_init_response(self, message: Message, data: bytes, now: float) -> None:
        ctx = self._ctx
        pending = ctx.pending
        if pending is None or pending.purpose != "init" or message.header.message_id != 0:
            raise Drop("unexpected IKE_SA_INIT response")
        payloads = message.payloads
        if unsupported_critical(payloads) is not None:
            raise Drop("IKE_SA_INIT response with an unsupported critical payload",
                       "unsupported-critical")
        found = notifies(payloads)
        cookie = found.get(NotifyType.COOKIE)
        if cookie is not None and cookie.data != self._cookie:
            if not 1 <= len(cookie.data) <= 64:  # RFC 7296 §2.6
                raise Drop("COOKIE of a bad size")
            ctx.pending = None
            self._cookie = cookie.data
            self._start_init(now)
            return
        if NotifyType.INVALID_KE_PAYLOAD in found:
            self._retry_with_group(found[NotifyType.INVALID_KE_PAYLOAD].data, now)
            return
        error = self._error_notify(payloads)
        if error is not None:
            ctx.pending = None
            if error == NotifyType.NO_PROPOSAL_CHOSEN:
                self._emit(NoProposalChosen("IKE_SA_INIT", "peer accepted none of our IKE "
                                            "proposals"))
            self._close(f"IKE_SA_INIT failed: {self._notify_name(error)}")
            return
        sa = _one(payloads, SaPayload, "SA")
        ke = _one(payloads, KePayload, "KE")
        nr = nonce_of(payloads)
        self.fragmentation = NotifyType.IKEV2_FRAGMENTATION_SUPPORTED in found
        suite = accept_answer(list(self.config.ike_proposals), sa.proposals)
        if suite is None or suite.dh != ke.group or ke.group != self._ke_group:
            raise Drop("IKE_SA_INIT response chose something we did not offer")
        if message.header.spi_r == ZERO_SPI or self._dh is None:
            raise Drop("IKE_SA_INIT response without responder SPI")
        try:
            shared = self._dh.shared_secret(ke.data)
        except CryptoError as exc:
            raise Drop(str(exc)) from exc
        ctx.pending = None
        ctx.spi_r = message.header.spi_r
        ctx.suite = suite
        self._nr = nr
        self._init_response = data
        self._install_ike_keys(ctx, shared)
        peer_nat, self.behind_nat = self._nat_detected(payloads, message.header.spi_r)
        if peer_nat or self.behind_nat or self.config.force_encap:
            self.encapsulated = True
            self.remote_addr = (self.remote_addr[0], c.NAT_T_PORT)
        self._addke_todo = list(suite.additional_kes)
        if not self._addke_todo:
            self._send_auth(now)
        elif NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED not in found:
            self._close("peer chose additional key exchanges without IKE_INTERMEDIATE")
        else:
            self._send_intermediate(now)

    # -- additional key exchanges (RFC 9370 in RFC 9242's IKE_INTERMEDIATE) ------------

    def _send_intermediate(self, now: float) -> None:
        ctx = self._ctx
        self._kem = KemExchange(self._addke_todo[0], self._rand)
        payloads: list[Payload] = [KePayload(self._kem.method, self._kem.public)]
        self._send_request(ctx, ExchangeType.IKE_INTERMEDIATE, payloads, "intermediate", now)
        if ctx.pending is not None:
            self._int_auth_i = self._int_auth(
                ctx, True, self._int_auth_i, ctx.sent_int_auth_octets(ctx.pending.data, payloads)
            )

    def _int_auth(self, ctx: IkeContext, of_initiator: bool, previous: bytes,
                  octets: bytes) -> bytes:
        suite, keys = ctx.suite, ctx.keys
        if suite is None or suite.prf is None or keys is None:
            raise Drop("no IKE keys")
        return int_auth(suite.prf, keys.sk_pi if of_initiator else keys.sk_pr, previous, octets)

    def _mix_additional_key(self, ctx: IkeContext, shared: bytes) -> None:
        """SKEYSEED(n) = prf(SK_d(n-1), SK(n) | Ni | Nr), then every SK_* anew (RFC 9370)."""
        suite, keys = ctx.suite, ctx.keys
        if suite is None or suite.prf is None or keys is None:
            raise Drop("no IKE keys")
        seed = rekey_skeyseed(suite.prf, keys.sk_d, shared, self._ni, self._nr)
        ctx.install_keys(suite, derive_ike_keys(
            suite.prf, suite.encr, suite.key_bits, suite.integ, seed, self._ni, self._nr,
            ctx.spi_i, ctx.spi_r,
        ), self._rand, keep_previous=not self.is_initiator)
        self._addke_todo.pop(0)

    def _on_intermediate_response(self, ctx: IkeContext, payloads: list[Payload],
                                  now: float) -> None:
        kem = self._kem
        error = self._error_notify(payloads)
        kes = find(payloads, KePayload)
        if kem is None or not self._addke_todo:
            raise Drop("unexpected IKE_INTERMEDIATE response")
        if error is not None:
            self._close(f"IKE_INTERMEDIATE failed: {self._notify_name(error)}")
            return
        try:
            if len(kes) != 1 or kes[0].group != kem.method:
                raise CryptoError("IKE_INTERMEDIATE response without the negotiated KE")
            shared = kem.shared_secret(kes[0].data)
        except CryptoError as exc:  # authenticated but unusable: the SA cannot go on
            self._close(f"additional key exchange failed: {exc}")
            return
        self._int_auth_r = self._int_auth(ctx, False, self._int_auth_r,
                                          ctx.last_int_auth_octets)
        self._kem = None
        self._mix_additional_key(ctx, shared)
        if self._addke_todo:
            self._send_intermediate(now)
        else:
            self._send_auth(now)

    def _on_intermediate_request(self, ctx: IkeContext, message_id: int,
                                 payloads: list[Payload]) -> None:
        if self.state is not IkeState.AUTH_WAIT or not self._addke_todo:
            raise Drop("IKE_INTERMEDIATE request out of sequence")
        method = self._addke_todo[0]
        kes = find(payloads, KePayload)
        try:
            if len(kes) != 1 or kes[0].group != method:
                raise CryptoError("IKE_INTERMEDIATE request without the negotiated KE")
            ciphertext, shared = kem_encapsulate(method, kes[0].data)
        except CryptoError as exc:  # authenticated, so the peer's: refuse and give up
            self._respond(ctx, ExchangeType.IKE_INTERMEDIATE, message_id,
                          [NotifyPayload(NotifyType.INVALID_SYNTAX)])
            self._close(f"additional key exchange failed: {exc}")
            return
        self._int_auth_i = self._int_auth(ctx, True, self._int_auth_i,
                                          ctx.last_int_auth_octets)
        answer: list[Payload] = [KePayload(method, ciphertext)]
        self._respond(ctx, ExchangeType.IKE_INTERMEDIATE, message_id, answer)
        if ctx.cached_response is not None:
            self._int_auth_r = self._int_auth(
                ctx, False, self._int_auth_r,
                ctx.sent_int_auth_octets(ctx.cached_response[1], answer),
            )
        self._mix_additional_key(ctx, shared)

    def _retry_with_group(self, data: bytes, now: float) -> None:
        group = int.from_bytes(data[:2], "big") if len(data) >= 2 else 0
        offered = {g for spec in self.config.ike_proposals for g in spec.dhs}
        if group not in offered or group == self._ke_group:
            raise Drop("INVALID_KE_PAYLOAD names a group we did not offer")
        self._ctx.pending = None
        self._ke_group = group
        self._start_init(now)

    def _nat_detected(self, payloads: list[Payload], spi_r: bytes) -> tuple[bool, bool]:
        """RFC 7296 §2.23: (peer behind NAT, we behind NAT) from the peer's NATD hashes.

        The peer's NATD_S must hash its address as we see it; NATD_D must hash our own
        address. A faked NATD_S (strongSwan ``encap=yes``, or libipsec) reads as peer NAT.
        """
        found = notifies(payloads)
        src = found.get(NotifyType.NAT_DETECTION_SOURCE_IP)
        dst = found.get(NotifyType.NAT_DETECTION_DESTINATION_IP)
        if src is None or dst is None:
            return False, False
        peer = not hmac.compare_digest(src.data, self._natd(spi_r, self.remote_addr, False))
        us = not hmac.compare_digest(dst.data, self._natd(spi_r, self.local_addr, False))
        return peer, us

    def _install_ike_keys(self, ctx: IkeContext, shared: bytes) -> None:
        suite = ctx.suite
        if suite is None or suite.prf is None:
            raise Drop("IKE suite missing")
        seed = skeyseed(suite.prf, self._ni, self._nr, shared)
        keys = derive_ike_keys(
            suite.prf, suite.encr, suite.key_bits, suite.integ, seed, self._ni, self._nr,
            ctx.spi_i, ctx.spi_r,
        )
        ctx.install_keys(suite, keys, self._rand)

    def _auth_value(self, ctx: IkeContext, ours: bool, id_body: bytes) -> bytes:
        """PSK AUTH (RFC 7296 §2.15) for our side (``ours``) or the peer's; after
        IKE_INTERMEDIATE exchanges it covers their IntAuth too (RFC 9242 §3.3.2)."""
        suite, keys = ctx.suite, ctx.keys
        if suite is None or suite.prf is None or keys is None:
            raise Drop("no IKE keys")
        as_initiator = ours == self.is_initiator
        message = self._init_request if as_initiator else self._init_response
        nonce = self._nr if as_initiator else self._ni
        sk_p = keys.sk_pi if as_initiator else keys.sk_pr
        intermediate = b""
        if self._int_auth_i:
            intermediate = (self._int_auth_i + self._int_auth_r
                            + self._auth_mid.to_bytes(4, "big"))
        return psk_auth(suite.prf, self.config.psk, message, nonce, sk_p, id_body,
                        intermediate)

    def _send_auth(self, now: float) -> None:
        ctx = self._ctx
        spi = new_spi(self._rand)
        my_id = IdPayload(False, self.config.local_id.id_type, self.config.local_id.data)
        payloads: list[Payload] = [my_id]
        if self.config.initial_contact:
            payloads.append(NotifyPayload(NotifyType.INITIAL_CONTACT))
        if self.config.remote_id is not None:
            rid = self.config.remote_id
            payloads.append(IdPayload(True, rid.id_type, rid.data))
        specs = [s.without_dh() for s in self.config.esp_proposals]
        self._auth_mid = ctx.next_request_id
        payloads += [
            AuthPayload(AuthMethod.SHARED_KEY_MIC, self._auth_value(ctx, True, my_id.body)),
            SaPayload(build_proposals(specs, spi)),
            TsPayload(False, list(self.config.local_ts)),
            TsPayload(True, list(self.config.remote_ts)),
        ]
        self._send_request(ctx, ExchangeType.IKE_AUTH, payloads, "auth", now,
                           RequestState(spi=spi))
        self.state = IkeState.AUTH_SENT

    def _identity_ok(self, peer: IdPayload) -> bool:
        expected = self.config.remote_id
        return expected is None or (peer.id_type, peer.data) == (expected.id_type, expected.data)

    def _on_auth_response(self, ctx: IkeContext, payloads: list[Payload], spi: bytes,
                          now: float) -> None:
        if NotifyType.AUTHENTICATION_FAILED in notifies(payloads):
            self._auth_failed("peer rejected our authentication (PSK or identity)")
            return
        ids = [p for p in find(payloads, IdPayload) if p.responder]
        auths = find(payloads, AuthPayload)
        if not ids or not auths:
            self._auth_failed("IKE_AUTH response lacks IDr or AUTH")
            return
        if not self._identity_ok(ids[0]):
            self._auth_failed(f"peer identity {ids[0].data!r} is not the configured one")
            return
        expected = self._auth_value(ctx, False, ids[0].body)
        if auths[0].method != AuthMethod.SHARED_KEY_MIC or not hmac.compare_digest(
            auths[0].data, expected
        ):
            self._auth_failed("peer AUTH did not verify (different PSK?)")
            return
        self._established(ctx, str(_identity_text(ids[0])), now)
        self._first_child_from_response(ctx, payloads, spi, now)

    def _first_child_from_response(
        self, ctx: IkeContext, payloads: list[Payload], spi: bytes, now: float
    ) -> None:
        error = self._error_notify(payloads)
        if error == NotifyType.NO_PROPOSAL_CHOSEN:
            self._emit(NoProposalChosen("IKE_AUTH", "peer accepted none of our ESP proposals"))
            return
        if error is not None:
            self._emit(ChildSaFailed(f"CHILD_SA refused: {self._notify_name(error)}"))
            return
        specs = [s.without_dh() for s in self.config.esp_proposals]
        sas = find(payloads, SaPayload)
        suite = accept_answer(specs, sas[0].proposals, ignore_dh=True) if sas else None
        tsi = [t for t in find(payloads, TsPayload) if not t.responder]
        tsr = [t for t in find(payloads, TsPayload) if t.responder]
        if suite is None or not tsi or not tsr or len(sas[0].proposals[0].spi) != 4:
            self._emit(ChildSaFailed("IKE_AUTH response carries no acceptable CHILD_SA"))
            return
        if not (is_subset(tsi[0].selectors, list(self.config.local_ts))
                and is_subset(tsr[0].selectors, list(self.config.remote_ts))):
            self._emit(ChildSaFailed("peer narrowed traffic selectors outside our policy"))
            return
        params = ChildParams(suite, spi, sas[0].proposals[0].spi,
                             tuple(tsi[0].selectors), tuple(tsr[0].selectors))
        self._add_child(ctx, params, self._ni, self._nr, b"", True, now, None)

    def _add_child(
        self, ctx: IkeContext, params: ChildParams, ni: bytes, nr: bytes, shared: bytes,
        we_initiated: bool, now: float, replaces: ChildSa | None, *, outbound: bool = True,
    ) -> ChildSa:
        if ctx.keys is None or ctx.suite is None:
            raise Drop("no IKE keys")
        child = make_child(
            params, sk_d=ctx.keys.sk_d, prf_suite=ctx.suite, nonce_i=ni, nonce_r=nr,
            shared=shared, we_initiated=we_initiated, now=now,
            rekey_time=self.config.child_rekey_time, life_time=self.config.child_life_time,
            rekey_jitter=self.config.child_rekey_jitter, rand=self._rand,
        )
        self.children.append(child)
        self._emit(child.established(replaces.spi_in if replaces else None, outbound))
        return child

    def _established(self, ctx: IkeContext, remote_id: str, now: float) -> None:
        self.state = IkeState.ESTABLISHED
        self._half_open_deadline = None
        self._last_received = now
        self._ike_rekey_at = now + self.config.ike_rekey_time - jitter(
            self._rand, self.config.ike_rekey_jitter
        )
        self._dh = None
        if ctx.suite is not None:
            self._emit(IkeSaEstablished(ctx.local_spi, ctx.remote_spi, ctx.suite, remote_id))

    def _auth_failed(self, reason: str) -> None:
        self._emit(AuthenticationFailed(reason))
        self._close(f"authentication failed: {reason}")

    # -- responder ---------------------------------------------------------------------

    def _on_init_message(self, message: Message, data: bytes, addr: Address, now: float) -> None:
        header = message.header
        if header.is_response:
            if not self.is_initiator or header.spi_i != self._ctx.spi_i:
                raise Drop("IKE_SA_INIT response for another SA", "unknown-spi")
            self._on_init_response(message, data, now)
            return
        if self.is_initiator:
            raise Drop("IKE_SA_INIT request sent to an initiator")
        if self.state is IkeState.AUTH_WAIT and header.spi_i == self._ctx.spi_i:
            if data == self._init_request and self._ctx.cached_response is not None:
                self._send_cached(self._ctx)  # retransmitted request
                return
            raise Drop("different IKE_SA_INIT for a half-open SA")
        if self.state is not IkeState.INITIAL:
            raise Drop("IKE_SA_INIT request in the wrong state")
        if header.message_id != 0 or header.spi_r != ZERO_SPI or not header.from_initiator:
            raise Drop("IKE_SA_INIT request with a bad header")
        critical = unsupported_critical(message.payloads)
        if critical is not None:  # RFC 7296 §2.5: refused, and no state is kept
            self._answer_stateless(header, addr, NotifyPayload(
                NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, bytes([critical])))
            raise Drop(f"unsupported critical payload {critical}", "unsupported-critical")
        self._answer_init(message, data, addr, now)

    def _answer_stateless(self, header: IkeHeader, addr: Address, notify: NotifyPayload) -> None:
        self._outbox.append((stateless_answer(header.spi_i, notify.notify_type, notify.data),
                             addr))

    def _answer_init(self, message: Message, data: bytes, addr: Address, now: float) -> None:
        payloads = message.payloads
        sa = _one(payloads, SaPayload, "SA")
        ke = _one(payloads, KePayload, "KE")
        ni = nonce_of(payloads)
        chosen = select(list(self.config.ike_proposals), sa.proposals, ke_group=ke.group)
        if (chosen is not None and chosen[1].additional_kes
                and NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED not in notifies(payloads)):
            chosen = None  # RFC 9370 §2.2.1: additional key exchanges need IKE_INTERMEDIATE
        if chosen is None:
            self._answer_stateless(message.header, addr,
                                   NotifyPayload(NotifyType.NO_PROPOSAL_CHOSEN))
            self._emit(NoProposalChosen("IKE_SA_INIT", "initiator offered no IKE proposal "
                                        "we accept"))
            self._close("no proposal chosen")
            return
        proposal, suite = chosen
        if ke.group != suite.dh:
            group = int(suite.dh).to_bytes(2, "big")
            self._answer_stateless(message.header, addr,
                                   NotifyPayload(NotifyType.INVALID_KE_PAYLOAD, group))
            return
        dh = self._new_dh(suite.dh)
        try:
            shared = dh.shared_secret(ke.data)
        except CryptoError as exc:
            raise Drop(str(exc)) from exc
        ctx = IkeContext(message.header.spi_i, self._rand(8), False)
        self._ctx = ctx
        ctx.suite = suite
        self._ni, self._nr = ni, self._nonce()
        self.remote_addr = addr
        self.behind_nat = self._nat_detected(payloads, ZERO_SPI)[1]
        response: list[Payload] = [
            SaPayload([answer_proposal(proposal, suite, b"")]),
            KePayload(suite.dh, dh.public),
            NoncePayload(self._nr),
            NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP,
                          self._natd(ctx.spi_r, self.local_addr, self.config.force_encap)),
            NotifyPayload(NotifyType.NAT_DETECTION_DESTINATION_IP,
                          self._natd(ctx.spi_r, addr, False)),
        ]
        if suite.additional_kes:
            response.append(NotifyPayload(NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED))
            self._addke_todo = list(suite.additional_kes)
        if NotifyType.IKEV2_FRAGMENTATION_SUPPORTED in notifies(payloads):  # RFC 7383 §2.3
            self.fragmentation = True
            response.append(NotifyPayload(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
        self._respond(ctx, ExchangeType.IKE_SA_INIT, 0, response)
        self._init_request = data
        self._init_response = ctx.cached_response[1] if ctx.cached_response else b""
        self._install_ike_keys(ctx, shared)
        self.state = IkeState.AUTH_WAIT
        self._half_open_deadline = now + self.config.half_open_timeout

    def _on_auth_request(self, ctx: IkeContext, message_id: int, payloads: list[Payload],
                         now: float) -> None:
        self._auth_mid = message_id
        ctx.forget_previous_keys()
        ids = [p for p in find(payloads, IdPayload) if not p.responder]
        wanted = [p for p in find(payloads, IdPayload) if p.responder]
        auths = find(payloads, AuthPayload)
        me = self.config.local_id
        reason = None
        if not ids or not auths:
            reason = "IKE_AUTH request lacks IDi or AUTH"
        elif wanted and (wanted[0].id_type, wanted[0].data) != (me.id_type, me.data):
            reason = f"initiator asked for identity {wanted[0].data!r}, we are {me}"
        elif not self._identity_ok(ids[0]):
            reason = f"initiator identity {ids[0].data!r} is not the configured one"
        elif auths[0].method != AuthMethod.SHARED_KEY_MIC or not hmac.compare_digest(
            auths[0].data, self._auth_value(ctx, False, ids[0].body)
        ):
            reason = "initiator AUTH did not verify (different PSK?)"
        if reason is not None:
            self._respond(ctx, ExchangeType.IKE_AUTH, message_id,
                          [NotifyPayload(NotifyType.AUTHENTICATION_FAILED)])
            self._auth_failed(reason)
            return
        my_id = IdPayload(True, me.id_type, me.data)
        response: list[Payload] = [
            my_id, AuthPayload(AuthMethod.SHARED_KEY_MIC, self._auth_value(ctx, True, my_id.body))
        ]
        child_payloads, params = self._negotiate_first_child(payloads)
        self._respond(ctx, ExchangeType.IKE_AUTH, message_id, response + child_payloads)
        self._established(ctx, str(_identity_text(ids[0])), now)
        if params is not None:
            self._add_child(ctx, params, self._ni, self._nr, b"", False, now, None)

    def _negotiate_first_child(
        self, payloads: list[Payload]
    ) -> tuple[list[Payload], ChildParams | None]:
        """Responder's CHILD_SA inside IKE_AUTH: proposal (no DH) and narrowed selectors."""
        sas = find(payloads, SaPayload)
        tsi = [t for t in find(payloads, TsPayload) if not t.responder]
        tsr = [t for t in find(payloads, TsPayload) if t.responder]
        specs = [s.without_dh() for s in self.config.esp_proposals]
        chosen = select(specs, sas[0].proposals, ignore_dh=True) if sas else None
        if chosen is None or len(chosen[0].spi) != 4 or chosen[0].protocol != ProtocolId.ESP:
            self._emit(NoProposalChosen("IKE_AUTH", "initiator offered no ESP proposal we "
                                        "accept"))
            return [NotifyPayload(NotifyType.NO_PROPOSAL_CHOSEN)], None
        their_side = narrow(tsi[0].selectors, list(self.config.remote_ts)) if tsi else []
        our_side = narrow(tsr[0].selectors, list(self.config.local_ts)) if tsr else []
        if not their_side or not our_side:
            self._emit(ChildSaFailed("traffic selectors unacceptable"))
            return [NotifyPayload(NotifyType.TS_UNACCEPTABLE)], None
        proposal, suite = chosen
        spi = new_spi(self._rand)
        params = ChildParams(suite, spi, proposal.spi, tuple(our_side), tuple(their_side))
        answer: list[Payload] = [
            SaPayload([answer_proposal(proposal, suite, spi)]),
            TsPayload(False, their_side),
            TsPayload(True, our_side),
        ]
        return answer, params


def _identity_text(payload: IdPayload) -> str:
    return str(Identity(payload.id_type, payload.data))
