"""Rekeying the IKE SA itself, both roles (RFC 7296 §2.18), with collisions and RFC 9370.

* ``SA(new SPI), Ni, KE`` in CREATE_CHILD_SA on the current SA; the requester becomes the
  initiator of the new IKE SA, SKEYSEED' = prf(SK_d old, g^ir | Ni | Nr), CHILD_SAs move
  over unchanged and the requester deletes the old SA.
* Additional key exchanges (RFC 9370 §2.2.4): when the chosen proposal has some (e.g.
  ML-KEM-768), the answer carries ``N(ADDITIONAL_KEY_EXCHANGE, link)`` and the requester
  runs one IKE_FOLLOWUP_KE per method on the current SA, echoing the link; only then is the
  new SA keyed, with SKEYSEED' = prf(SK_d old, SK(0) | Ni | Nr | SK(1) | ... | SK(n)).
* Collisions (§2.8.2): when both sides rekey at once, both answer, and the SA whose
  exchange holds the lowest of the four nonces is redundant: its creator deletes it, the
  other creator deletes the old SA, so exactly one IKE SA survives. With additional key
  exchanges the loser abandons its own before IKE_FOLLOWUP_KE (as strongSwan 6 does); a
  peer request that arrives once ours is in IKE_FOLLOWUP_KE gets TEMPORARY_FAILURE. A peer
  that deletes the old SA, or uses its new one, before we settled the collision has won.
* A refused or unusable rekey never costs the working SA: it stays, and the rekey is
  tried again later (after TEMPORARY_FAILURE soon, with jitter, so colliding peers diverge).
"""

from __future__ import annotations

import hmac

from . import constants as c
from .base import Drop, NewIke
from .child import jitter
from .constants import ExchangeType, NotifyType, ProtocolId
from .crypto import (
    CryptoError,
    DhExchange,
    KemExchange,
    derive_ike_keys,
    kem_encapsulate,
    rekey_skeyseed,
)
from .events import IkeRekeyFailed, IkeSaRekeyed, NoProposalChosen
from .handshake import Handshake, nonce_of
from .messages import (
    DeletePayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    SaPayload,
    find,
    notifies,
)
from .proposals import accept_answer, answer_proposal, build_proposals, select
from .window import IkeContext, RequestState

LINK_LENGTH = 8  # our ADDITIONAL_KEY_EXCHANGE data: any value works, the peer echoes it


class IkeRekey(Handshake):
    """Both roles of an IKE SA rekey, collisions and IKE_FOLLOWUP_KE (see module)."""

    # -- shared ------------------------------------------------------------------------

    def _retry_time(self, now: float) -> float:
        """When to retry after TEMPORARY_FAILURE: jittered, so colliding peers diverge."""
        return now + c.REKEY_RETRY_DELAY + jitter(self._rand, c.REKEY_RETRY_DELAY)

    @staticmethod
    def _retry_group(payloads: list[Payload]) -> int | None:
        found = notifies(payloads).get(NotifyType.INVALID_KE_PAYLOAD)
        if found is None or len(found.data) < 2:
            return None
        return int.from_bytes(found.data[:2], "big")

    def _pfs_secret(self, dh: DhExchange | None, group: int, payloads: list[Payload]) -> bytes:
        if not group:
            return b""
        kes = find(payloads, KePayload)
        if dh is None or not kes or kes[0].group != group or dh.group != group:
            raise ValueError("PFS group mismatch")
        try:
            return dh.shared_secret(kes[0].data)
        except CryptoError as exc:
            raise ValueError(str(exc)) from exc

    def _key_new_ike(self, old: IkeContext, new: NewIke) -> None:
        """Derive the new IKE SA's keys from the old SA's SK_d and every secret."""
        suite = new.suite
        if suite.prf is None or old.keys is None or old.suite is None or old.suite.prf is None:
            raise ValueError("IKE rekey without keys")
        seed = rekey_skeyseed(old.suite.prf, old.keys.sk_d, new.secrets[0], new.ni, new.nr,
                              b"".join(new.secrets[1:]))
        keys = derive_ike_keys(suite.prf, suite.encr, suite.key_bits, suite.integ, seed,
                               new.ni, new.nr, new.ctx.spi_i, new.ctx.spi_r)
        new.ctx.install_keys(suite, keys, self._rand)

    def _switch_ike(self, new: NewIke, now: float, *, collision: bool = False) -> None:
        """Make the keyed ``new`` SA current; the previous one becomes the old SA."""
        old = self._ctx
        if new.ctx.keys is None:
            self._key_new_ike(old, new)
        self._old_ctx, self._ctx = old, new.ctx
        self._ke_group = new.suite.dh
        self._queue = type(self._queue)(item for item in self._queue if item[0] != "rekey_ike")
        self._ike_rekey_at = now + self.config.ike_rekey_time - jitter(
            self._rand, self.config.ike_rekey_jitter)
        self._emit(IkeSaRekeyed(old.local_spi, new.ctx.local_spi, new.suite,
                                collision or new.collided))

    def _adopt_passive(self, now: float, *, collision: bool = False) -> None:
        """The peer's rekey is complete and won: its SA becomes ours (the peer deletes the
        old one). Our own rekey, if any, is abandoned."""
        new, self._passive = self._passive, None
        if new is None:
            return
        pending = self._ctx.pending
        ours = pending is not None and pending.purpose in ("rekey_ike", "followup_ke")
        collision = collision or ours or self._rekeying is not None
        self._rekeying = None
        if ours:
            self._ctx.pending = None
        self._switch_ike(new, now, collision=collision)

    def _forget_context(self, ctx: IkeContext) -> None:
        if ctx is self._old_ctx:
            self._old_ctx = None
        if ctx is self._redundant_ctx:
            self._redundant_ctx = self._redundant_until = None
        if self._passive is not None and ctx is self._passive.ctx:
            self._passive = None  # the peer deleted the SA its rekey made: it lost

    def _keep_redundant(self, ctx: IkeContext, now: float) -> None:
        """Keep a collision's redundant SA until its DELETE, at most ``half_open_timeout``
        (the peer may never send it when it saw no collision)."""
        self._redundant_ctx = ctx
        self._redundant_until = now + self.config.half_open_timeout

    # -- our rekey ---------------------------------------------------------------------

    def _start_rekey_ike(self, now: float) -> None:
        spi, ni = self._rand(8), self._nonce()
        suite = self._ctx.suite
        group = self._ke_group if self._ke_group else (suite.dh if suite else 0)
        dh = self._new_dh(group)
        payloads: list[Payload] = [
            SaPayload(build_proposals(list(self.config.ike_proposals), spi)),
            NoncePayload(ni),
            KePayload(group, dh.public),
        ]
        self._send_request(self._ctx, ExchangeType.CREATE_CHILD_SA, payloads, "rekey_ike", now,
                           RequestState(spi, ni, dh))

    def _on_rekey_ike_response(
        self, ctx: IkeContext, state: RequestState, payloads: list[Payload], now: float
    ) -> None:
        error = self._error_notify(payloads)
        if error is not None:
            self._rekey_ike_refused(error, payloads, now)
            return
        sas = find(payloads, SaPayload)
        suite = accept_answer(list(self.config.ike_proposals), sas[0].proposals) if sas else None
        link = notifies(payloads).get(NotifyType.ADDITIONAL_KEY_EXCHANGE)
        try:
            if suite is None or len(sas[0].proposals[0].spi) != 8:
                raise ValueError("no acceptable SA")
            if suite.additional_kes and (link is None or not link.data):
                raise ValueError("additional key exchanges without ADDITIONAL_KEY_EXCHANGE")
            shared = self._pfs_secret(state.dh, suite.dh, payloads)
            nr = nonce_of(payloads)
        except (ValueError, Drop) as exc:
            self._rekey_ike_failed(f"IKE rekey response unusable: {exc}", now)
            return
        new = NewIke(IkeContext(state.spi, sas[0].proposals[0].spi, True), suite, state.nonce,
                     nr, [shared], list(suite.additional_kes), link.data if link else b"")
        if not self._lost_collision(new, now):
            self._rekeying = new
            self._continue_rekey(ctx, now)

    def _continue_rekey(self, ctx: IkeContext, now: float) -> None:
        """The next IKE_FOLLOWUP_KE, or, all exchanged, switch and delete the old SA."""
        new = self._rekeying
        if new is None:
            return
        if new.todo:
            new.kem = KemExchange(new.todo[0], self._rand)
            self._send_request(ctx, ExchangeType.IKE_FOLLOWUP_KE, [
                KePayload(new.kem.method, new.kem.public),
                NotifyPayload(NotifyType.ADDITIONAL_KEY_EXCHANGE, new.link),
            ], "followup_ke", now)
            return
        self._rekeying = None
        self._switch_ike(new, now)
        self._send_request(ctx, ExchangeType.INFORMATIONAL,
                           [DeletePayload(ProtocolId.IKE, [])], "delete_old_ike", now)

    def _on_followup_response(self, ctx: IkeContext, payloads: list[Payload],
                              now: float) -> None:
        new = self._rekeying
        if new is None or new.kem is None:
            raise Drop("unexpected IKE_FOLLOWUP_KE response")
        error = self._error_notify(payloads)
        kes = find(payloads, KePayload)
        try:
            if error is not None:
                raise CryptoError(f"refused with {self._notify_name(error)}")
            if len(kes) != 1 or kes[0].group != new.kem.method:
                raise CryptoError("answer without the negotiated KE")
            shared = new.kem.shared_secret(kes[0].data)
        except CryptoError as exc:
            self._rekeying = None
            self._rekey_ike_failed(f"IKE_FOLLOWUP_KE failed: {exc}", now)
            return
        new.secrets.append(shared)
        new.todo.pop(0)
        new.kem = None
        link = notifies(payloads).get(NotifyType.ADDITIONAL_KEY_EXCHANGE)
        if link is not None:
            new.link = link.data
        self._continue_rekey(ctx, now)

    def _rekey_ike_refused(self, error: int, payloads: list[Payload], now: float) -> None:
        if self._passive is not None and self._passive.ctx.keys is not None:
            self._adopt_passive(now, collision=True)  # the peer did not see it: its SA won
        elif error == NotifyType.INVALID_KE_PAYLOAD:
            self._ke_group = self._retry_group(payloads) or self._ke_group
            self._ike_rekey_at = now
        elif error == NotifyType.TEMPORARY_FAILURE:
            self._ike_rekey_at = self._retry_time(now)
        else:
            if error == NotifyType.NO_PROPOSAL_CHOSEN:
                self._emit(NoProposalChosen("CREATE_CHILD_SA", "peer rejected our IKE rekey"))
            self._rekey_ike_failed(f"IKE rekey refused: {self._notify_name(error)}", now)

    def _rekey_ike_failed(self, reason: str, now: float) -> None:
        """Keep the working SA and try the rekey again later."""
        if self._passive is not None and self._passive.ctx.keys is not None:
            self._adopt_passive(now, collision=True)
            return
        self._emit(IkeRekeyFailed(reason))
        self._ike_rekey_at = now + c.REKEY_REFUSED_DELAY + jitter(
            self._rand, c.REKEY_REFUSED_DELAY / 2)

    def _lost_collision(self, new: NewIke, now: float) -> bool:
        """Settle a collision with the peer's rekey we answered (RFC 7296 §2.8.2): True
        when ours holds the lowest nonce and so is the redundant one, given up here."""
        passive = self._passive
        if passive is None:
            return False
        new.collided = True
        if new.lower_nonce < passive.lower_nonce:
            if not new.todo:  # the peer has it: we created it, we delete it
                self._key_new_ike(self._ctx, new)
                self._keep_redundant(new.ctx, now)
                self._send_request(new.ctx, ExchangeType.INFORMATIONAL,
                                   [DeletePayload(ProtocolId.IKE, [])], "delete_redundant", now)
            passive.collided = True
            if passive.ctx.keys is not None:
                self._adopt_passive(now)  # else it finishes its IKE_FOLLOWUP_KE first
            return True
        if passive.ctx.keys is not None:
            self._keep_redundant(passive.ctx, now)  # the peer created it and deletes it
        self._passive = None  # an unfinished one the peer abandons
        return False

    # -- the peer's rekey --------------------------------------------------------------

    def _answer_rekey_ike(
        self, ctx: IkeContext, message_id: int, payloads: list[Payload], sa: SaPayload,
        now: float,
    ) -> None:
        def refuse(notify: int, data: bytes = b"") -> None:
            self._respond(ctx, ExchangeType.CREATE_CHILD_SA, message_id,
                          [NotifyPayload(notify, data)])

        pending = ctx.pending
        passive_done = self._passive is not None and self._passive.ctx.keys is not None
        if (self._old_ctx is not None or passive_done or self._rekeying is not None
                or (pending is not None and pending.purpose == "followup_ke")):
            return refuse(NotifyType.TEMPORARY_FAILURE)  # an unfinished one is started over
        kes = find(payloads, KePayload)
        chosen = select(list(self.config.ike_proposals), sa.proposals,
                        ke_group=kes[0].group if kes else None)
        if chosen is None or len(chosen[0].spi) != 8:
            self._emit(NoProposalChosen("CREATE_CHILD_SA", "peer's IKE rekey proposals do "
                                        "not match ours"))
            return refuse(NotifyType.NO_PROPOSAL_CHOSEN)
        proposal, suite = chosen
        if not kes or kes[0].group != suite.dh:
            return refuse(NotifyType.INVALID_KE_PAYLOAD, int(suite.dh).to_bytes(2, "big"))
        ni, nr, spi = nonce_of(payloads), self._nonce(), self._rand(8)
        dh = self._new_dh(suite.dh)
        try:
            shared = dh.shared_secret(kes[0].data)
        except CryptoError:
            return refuse(NotifyType.INVALID_SYNTAX)
        new = NewIke(IkeContext(proposal.spi, spi, False), suite, ni, nr, [shared],
                     list(suite.additional_kes))
        answer: list[Payload] = [SaPayload([answer_proposal(proposal, suite, spi)]),
                                 NoncePayload(nr), KePayload(suite.dh, dh.public)]
        if new.todo:
            new.link = self._rand(LINK_LENGTH)
            answer.append(NotifyPayload(NotifyType.ADDITIONAL_KEY_EXCHANGE, new.link))
        self._respond(ctx, ExchangeType.CREATE_CHILD_SA, message_id, answer)
        self._passive = new
        if not new.todo:
            self._passive_done(ctx, now)
        return None

    def _on_followup_request(self, ctx: IkeContext, message_id: int,
                             payloads: list[Payload], now: float) -> None:
        new = self._passive
        link = notifies(payloads).get(NotifyType.ADDITIONAL_KEY_EXCHANGE)
        if (ctx is not self._ctx or new is None or not new.todo or link is None
                or not hmac.compare_digest(link.data, new.link)):
            if ctx is self._ctx:
                self._passive = None  # whatever the peer was doing, it starts over
            self._respond(ctx, ExchangeType.IKE_FOLLOWUP_KE, message_id,
                          [NotifyPayload(NotifyType.STATE_NOT_FOUND)])
            return
        kes = find(payloads, KePayload)
        try:
            if len(kes) != 1 or kes[0].group != new.todo[0]:
                raise CryptoError("IKE_FOLLOWUP_KE without the negotiated KE")
            ciphertext, shared = kem_encapsulate(new.todo[0], kes[0].data)
        except CryptoError as exc:
            self._passive = None
            self._respond(ctx, ExchangeType.IKE_FOLLOWUP_KE, message_id,
                          [NotifyPayload(NotifyType.INVALID_SYNTAX)])
            self._emit(IkeRekeyFailed(f"peer's IKE_FOLLOWUP_KE unusable: {exc}"))
            return
        answer: list[Payload] = [KePayload(new.todo.pop(0), ciphertext)]
        new.secrets.append(shared)
        if new.todo:
            new.link = self._rand(LINK_LENGTH)
            answer.append(NotifyPayload(NotifyType.ADDITIONAL_KEY_EXCHANGE, new.link))
        self._respond(ctx, ExchangeType.IKE_FOLLOWUP_KE, message_id, answer)
        if not new.todo:
            self._passive_done(ctx, now)

    def _passive_done(self, ctx: IkeContext, now: float) -> None:
        """Every key exchange of the peer's rekey is done: key its SA, and switch to it
        unless our own rekey is out (then the collision is settled by its answer)."""
        new = self._passive
        if new is None:
            return
        self._key_new_ike(ctx, new)
        pending = ctx.pending
        if self._rekeying is None and (pending is None or pending.purpose != "rekey_ike"):
            self._adopt_passive(now)
