"""Exchanges on an established IKE SA: CREATE_CHILD_SA and INFORMATIONAL (RFC 7296 §1.3-1.4).

* CHILD_SA rekey (§2.8): ``N(REKEY_SA, old inbound SPI), SA, Ni, [KE], TSi, TSr``; the new
  SA is announced at once, the old one is deleted by its rekey initiator afterwards and
  its inbound half stays usable until that DELETE completes (no loss). The responder
  installs the new SA inbound only and sends on it once the old one is removed, as
  strongSwan does: the initiator may not have processed the answer yet. When both sides
  rekey the same SA at once, both exchanges complete and the lowest-nonce rule (§2.8.1)
  picks the redundant new SA, deleted by its creator; the other creator deletes the old.
* IKE SA rekey (§2.18), with its collisions and IKE_FOLLOWUP_KE: ``ike_rekey.py``.
* INFORMATIONAL: DELETE of CHILD_SAs (answered with our inbound SPIs) or of the IKE SA
  (answered empty), and empty DPD probes sent when nothing arrived for ``dpd_delay``.
"""

from __future__ import annotations

from .base import Drop, IkeState
from .child import ChildParams, ChildSa, ChildState, new_spi
from .constants import ExchangeType, NotifyType, ProtocolId
from .crypto import CryptoError
from .events import ChildSaFailed, NoProposalChosen, PeerDead
from .handshake import nonce_of
from .ike_rekey import IkeRekey
from .messages import (
    DeletePayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    SaPayload,
    TsPayload,
    find,
    notifies,
)
from .proposals import (
    ProposalSpec,
    accept_answer,
    answer_proposal,
    build_proposals,
    select,
)
from .traffic_selectors import TrafficSelector, narrow
from .window import IkeContext, PendingRequest, RequestState

INF = float("inf")


class EstablishedExchanges(IkeRekey):
    """Rekeying, deletion and liveness once IKE_AUTH has completed."""

    # -- timers ------------------------------------------------------------------------

    def _established_timers(self) -> list[float]:
        times = [self._ike_rekey_at]
        if self.config.dpd_delay and not self._dpd_queued and self._ctx.pending is None:
            times.append(self._last_received + self.config.dpd_delay)
        for child in self.children:
            if child.state is ChildState.INSTALLED:
                times.append(child.rekey_at)
            if child.state is not ChildState.DELETING:
                times.append(child.expire_at)
        return times

    def _established_timer(self, now: float) -> None:
        if now >= self._ike_rekey_at:
            self._ike_rekey_at = INF
            self._queue.append(("rekey_ike", None))
        for child in list(self.children):
            if child.state is ChildState.INSTALLED and now >= child.rekey_at:
                child.state = ChildState.REKEYING
                self._queue.append(("rekey_child", child))
            elif child.state is not ChildState.DELETING and now >= child.expire_at:
                child.state = ChildState.DELETING
                self._queue.append(("delete_child", child))
        delay = self.config.dpd_delay
        if (delay and not self._dpd_queued and self._ctx.pending is None
                and now >= self._last_received + delay):
            self._dpd_queued = True
            self._queue.append(("dpd", None))

    def _pump(self, now: float) -> None:
        """Start queued exchanges while our request window (size 1) is free."""
        while self.state is IkeState.ESTABLISHED and self._ctx.pending is None and self._queue:
            kind, child = self._queue.popleft()
            if child is not None and child not in self.children:
                continue
            starters = {
                "rekey_child": self._start_rekey_child,
                "delete_child": self._start_delete_child,
            }
            if child is not None:
                starters[kind](child, now)
            elif kind == "rekey_ike":
                self._start_rekey_ike(now)
            elif kind == "delete_ike":
                self._send_request(self._ctx, ExchangeType.INFORMATIONAL,
                                   [DeletePayload(ProtocolId.IKE, [])], "delete_ike", now)
            else:
                self._dpd_queued = False
                self._send_request(self._ctx, ExchangeType.INFORMATIONAL, [], "dpd", now)

    # -- requests we start -------------------------------------------------------------

    def _pfs_group(self) -> int:
        if self._child_group is not None:
            return self._child_group
        dhs = self.config.esp_proposals[0].dhs
        return dhs[0] if dhs else 0

    def _start_rekey_child(self, child: ChildSa, now: float) -> None:
        spi, ni = new_spi(self._rand), self._nonce()
        group = self._pfs_group()
        dh = self._new_dh(group) if group else None
        payloads: list[Payload] = [
            NotifyPayload(NotifyType.REKEY_SA, b"", ProtocolId.ESP, child.spi_in),
            SaPayload(build_proposals(list(self.config.esp_proposals), spi)),
            NoncePayload(ni),
        ]
        if dh is not None:
            payloads.append(KePayload(group, dh.public))
        payloads += [TsPayload(False, list(child.local_ts)),
                     TsPayload(True, list(child.remote_ts))]
        self._send_request(self._ctx, ExchangeType.CREATE_CHILD_SA, payloads, "rekey_child",
                           now, RequestState(spi, ni, dh, child))

    def _start_delete_child(self, child: ChildSa, now: float) -> None:
        child.state = ChildState.DELETING
        self._send_request(self._ctx, ExchangeType.INFORMATIONAL,
                           [DeletePayload(ProtocolId.ESP, [child.spi_in])], "delete_child",
                           now, RequestState(child=child))

    # -- responses to our requests ---------------------------------------------------

    def _on_established_response(
        self, ctx: IkeContext, pending: PendingRequest, payloads: list[Payload], now: float
    ) -> None:
        purpose, state = pending.purpose, pending.state
        if purpose == "rekey_child" and state.child is not None:
            self._on_rekey_child_response(ctx, state.child, state, payloads, now)
        elif purpose == "delete_child" and state.child is not None:
            self._remove_child(state.child, "rekeyed" if state.child.rekeyed else "deleted")
        elif purpose == "rekey_ike":
            self._on_rekey_ike_response(ctx, state, payloads, now)
        elif purpose == "delete_ike":
            self._close("deleted")
        elif purpose in ("delete_old_ike", "delete_redundant"):
            self._forget_context(ctx)

    def _on_rekey_child_response(
        self, ctx: IkeContext, old: ChildSa, state: RequestState,
        payloads: list[Payload], now: float,
    ) -> None:
        error = self._error_notify(payloads)
        if error is not None and old.collision is not None:
            old.state, old.rekeyed = ChildState.REKEYED, True  # the peer's rekey replaced it
            return
        if error is not None:
            old.state = ChildState.INSTALLED
            if error == NotifyType.INVALID_KE_PAYLOAD:
                self._child_group = self._retry_group(payloads)
                old.rekey_at = now
            elif error == NotifyType.TEMPORARY_FAILURE:
                old.rekey_at = self._retry_time(now)
            else:
                old.rekey_at = INF  # let it expire; the peer will not rekey it with us
                if error == NotifyType.NO_PROPOSAL_CHOSEN:
                    self._emit(NoProposalChosen("CREATE_CHILD_SA",
                                                "peer rejected our ESP proposals on rekey"))
                else:
                    self._emit(ChildSaFailed(f"rekey refused: {self._notify_name(error)}"))
            return
        try:
            params, nr, shared = self._rekey_answer(state, payloads)
        except (ValueError, Drop) as exc:
            if old.collision is not None:
                old.state, old.rekeyed = ChildState.REKEYED, True
                return
            old.state, old.rekey_at = ChildState.INSTALLED, INF
            self._emit(ChildSaFailed(f"rekey response unusable: {exc}"))
            return
        old.state = ChildState.REKEYED
        old.rekeyed = True
        if old.collision is not None and min(state.nonce, nr) < old.collision[1]:
            # RFC 7296 §2.8.1: the SA whose exchange holds the lowest of the four nonces is
            # redundant and its creator (us) deletes it; the peer deletes the old one
            ours = self._add_child(ctx, params, state.nonce, nr, shared, True, now, old,
                                   outbound=False)
            ours.rekeyed = True
            self._queue.appendleft(("delete_child", ours))
            return
        old.successor = self._add_child(ctx, params, state.nonce, nr, shared, True, now, old)
        self._queue.appendleft(("delete_child", old))  # the peer deletes its redundant SA

    def _rekey_answer(
        self, state: RequestState, payloads: list[Payload]
    ) -> tuple[ChildParams, bytes, bytes]:
        """The CHILD_SA a rekey response settles: parameters, Nr, PFS secret."""
        sas, tsi, tsr = self._child_payloads(payloads)
        suite = accept_answer(list(self.config.esp_proposals), sas[0].proposals) if sas else None
        if suite is None or len(sas[0].proposals[0].spi) != 4 or not tsi or not tsr:
            raise ValueError("rekey response carries no acceptable CHILD_SA")
        shared = self._pfs_secret(state.dh, suite.dh, payloads)
        nr = nonce_of(payloads)
        params = ChildParams(suite, state.spi, sas[0].proposals[0].spi, tuple(tsi), tuple(tsr))
        return params, nr, shared

    @staticmethod
    def _child_payloads(
        payloads: list[Payload],
    ) -> tuple[list[SaPayload], list[TrafficSelector], list[TrafficSelector]]:
        sas = find(payloads, SaPayload)
        ts = find(payloads, TsPayload)
        tsi = next((t.selectors for t in ts if not t.responder), [])
        tsr = next((t.selectors for t in ts if t.responder), [])
        return sas, tsi, tsr

    # -- requests from the peer ------------------------------------------------------

    def _on_established_request(
        self, ctx: IkeContext, exchange: int, message_id: int, payloads: list[Payload],
        now: float,
    ) -> None:
        if exchange == ExchangeType.INFORMATIONAL:
            self._on_informational(ctx, message_id, payloads, now)
            return
        if exchange == ExchangeType.IKE_FOLLOWUP_KE:
            self._on_followup_request(ctx, message_id, payloads, now)
            return
        if exchange != ExchangeType.CREATE_CHILD_SA:
            self._respond(ctx, exchange, message_id,
                          [NotifyPayload(NotifyType.INVALID_SYNTAX)])
            return
        if ctx is self._old_ctx:
            self._respond(ctx, exchange, message_id,
                          [NotifyPayload(NotifyType.TEMPORARY_FAILURE)])
            return
        sas = find(payloads, SaPayload)
        if sas and sas[0].proposals and sas[0].proposals[0].protocol == ProtocolId.IKE:
            self._answer_rekey_ike(ctx, message_id, payloads, sas[0], now)
        else:
            self._answer_create_child(ctx, message_id, payloads, now)

    def _answer_create_child(
        self, ctx: IkeContext, message_id: int, payloads: list[Payload], now: float
    ) -> None:
        def refuse(notify: int, data: bytes = b"") -> None:
            self._respond(ctx, ExchangeType.CREATE_CHILD_SA, message_id,
                          [NotifyPayload(notify, data)])

        rekey = notifies(payloads).get(NotifyType.REKEY_SA)
        old = None
        if rekey is not None:
            old = next((ch for ch in self.children if ch.spi_out == rekey.spi), None)
            if old is None or old.state is ChildState.DELETING:
                return refuse(NotifyType.CHILD_SA_NOT_FOUND)
            if old.state is ChildState.REKEYED:  # already replaced; its DELETE is coming
                return refuse(NotifyType.TEMPORARY_FAILURE)
        sas, tsi, tsr = self._child_payloads(payloads)
        specs: list[ProposalSpec] = list(self.config.esp_proposals)
        kes = find(payloads, KePayload)
        chosen = (select(specs, sas[0].proposals, ke_group=kes[0].group if kes else None)
                  if sas else None)
        if chosen is None or len(chosen[0].spi) != 4:
            self._emit(NoProposalChosen("CREATE_CHILD_SA", "peer's CHILD_SA proposals do "
                                        "not match ours"))
            return refuse(NotifyType.NO_PROPOSAL_CHOSEN)
        proposal, suite = chosen
        if suite.dh and (not kes or kes[0].group != suite.dh):
            return refuse(NotifyType.INVALID_KE_PAYLOAD, int(suite.dh).to_bytes(2, "big"))
        their_side = narrow(tsi, list(self.config.remote_ts))
        our_side = narrow(tsr, list(self.config.local_ts))
        if not their_side or not our_side:
            self._emit(ChildSaFailed("traffic selectors unacceptable"))
            return refuse(NotifyType.TS_UNACCEPTABLE)
        ni, nr, spi = nonce_of(payloads), self._nonce(), new_spi(self._rand)
        response: list[Payload] = [SaPayload([answer_proposal(proposal, suite, spi)]),
                                   NoncePayload(nr)]
        shared = b""
        if suite.dh:
            dh = self._new_dh(suite.dh)
            try:
                shared = dh.shared_secret(kes[0].data)
            except CryptoError:
                return refuse(NotifyType.INVALID_SYNTAX)
            response.append(KePayload(suite.dh, dh.public))
        response += [TsPayload(False, their_side), TsPayload(True, our_side)]
        self._respond(ctx, ExchangeType.CREATE_CHILD_SA, message_id, response)
        params = ChildParams(suite, spi, proposal.spi, tuple(our_side), tuple(their_side))
        new = self._add_child(ctx, params, ni, nr, shared, False, now, old,
                              outbound=old is None)
        if old is not None:  # sent on once the old SA is removed (its DELETE, or expiry)
            new.held, old.successor = True, new
        if old is not None and old.state is ChildState.REKEYING:
            old.collision = (new, min(ni, nr))  # settled when our own rekey is answered
        elif old is not None:
            old.state, old.rekeyed = ChildState.REKEYED, True
        return None

    def _on_informational(self, ctx: IkeContext, message_id: int,
                          payloads: list[Payload], now: float) -> None:
        deletes = find(payloads, DeletePayload)
        if any(d.protocol == ProtocolId.IKE for d in deletes):
            self._respond(ctx, ExchangeType.INFORMATIONAL, message_id, [])
            if ctx is self._ctx and self._passive is not None and self._passive.ctx.keys:
                self._adopt_passive(now)  # the peer's rekey won; this SA was the old one
            if ctx is self._ctx:
                self._close("deleted by peer")
            else:
                self._forget_context(ctx)
            return
        ours: list[bytes] = []
        for d in deletes:
            if d.protocol != ProtocolId.ESP:
                continue
            for spi in d.spis:
                child = next((ch for ch in self.children if ch.spi_out == spi), None)
                if child is not None:
                    ours.append(child.spi_in)
                    self._remove_child(child, "rekeyed" if child.rekeyed else
                                       "deleted by peer")
        response: list[Payload] = [DeletePayload(ProtocolId.ESP, ours)] if ours else []
        self._respond(ctx, ExchangeType.INFORMATIONAL, message_id, response)

    # -- liveness ----------------------------------------------------------------------

    def _peer_dead(self) -> None:
        self._emit(PeerDead())
        self._close("peer dead (no answer after retransmissions)")
