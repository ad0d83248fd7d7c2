"""Cipher suites: strongSwan proposal notation, SA payload construction and selection.

A configured proposal such as ``"aes256gcm16-prfsha256-ecp256"`` (IKE) or
``"aes256-sha256"`` (ESP) becomes a ``ProposalSpec``: per transform type, the acceptable
algorithms in preference order (same type = OR, different types = AND; RFC 7296 §3.3).
The responder picks the first of its own specs that matches one of the peer's proposals
and answers with exactly one transform per type (§2.7); nothing matching means
NO_PROPOSAL_CHOSEN. The result is a ``Suite``: the negotiated algorithms, with key sizes.

Additional key exchanges (RFC 9370) are written as in strongSwan 6: ``ke1_mlkem768`` asks
for ML-KEM-768 as Additional Key Exchange 1 (transform type 6), ``ke1_none`` makes it
optional. A peer that does not know these transform types rejects such a proposal
(RFC 7296 §3.3.6), so list a classical one after it to keep talking to older peers.

The keyword ``default`` (as in swanctl.conf) stands for ``DEFAULT_IKE``/``DEFAULT_ESP``:
every combination of AES-GCM-16 and AES-CBC (128/256) with SHA2-256/384/512, and the DH
groups 14, 19, 20, 21 and 31, strongest first, which is what data-centre gateways accept
as responders. SHA1, MD5, (3)DES and MODP groups under 2048 bits are never in it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .constants import DhGroup, EncrId, EsnId, IntegId, PrfId, ProtocolId, TransformType
from .messages import Proposal, Transform

AEAD_CIPHERS = frozenset({EncrId.AES_GCM_16})
SUPPORTED_ENCR = frozenset({EncrId.AES_CBC, EncrId.AES_GCM_16})
SUPPORTED_KEY_BITS = frozenset({128, 192, 256})

# strongSwan keyword -> (transform type, id); the key size is parsed from the keyword.
_DH_WORDS = {
    "modp2048": DhGroup.MODP_2048,
    "ecp256": DhGroup.ECP_256,
    "ecp384": DhGroup.ECP_384,
    "ecp521": DhGroup.ECP_521,
    "curve25519": DhGroup.CURVE25519,
    "x25519": DhGroup.CURVE25519,
}
# Methods an additional key exchange may use (``keN_<word>``); NONE makes that round optional.
_ADDKE_WORDS = {"mlkem768": DhGroup.ML_KEM_768, "none": DhGroup.NONE}
ADDKE_TYPES = tuple(TransformType(t) for t in range(TransformType.ADDKE1,
                                                    TransformType.ADDKE7 + 1))
_INTEG_WORDS = {
    "sha256": IntegId.HMAC_SHA2_256_128,
    "sha384": IntegId.HMAC_SHA2_384_192,
    "sha512": IntegId.HMAC_SHA2_512_256,
    "sha2_256": IntegId.HMAC_SHA2_256_128,
    "sha2_384": IntegId.HMAC_SHA2_384_192,
    "sha2_512": IntegId.HMAC_SHA2_512_256,
}
_INTEG_PRF = {
    IntegId.HMAC_SHA2_256_128: PrfId.HMAC_SHA2_256,
    IntegId.HMAC_SHA2_384_192: PrfId.HMAC_SHA2_384,
    IntegId.HMAC_SHA2_512_256: PrfId.HMAC_SHA2_512,
}
_PRF_WORDS = {
    "prfsha256": PrfId.HMAC_SHA2_256,
    "prfsha384": PrfId.HMAC_SHA2_384,
    "prfsha512": PrfId.HMAC_SHA2_512,
}
_ENCR_WORDS = {
    "aes128": (EncrId.AES_CBC, 128),
    "aes192": (EncrId.AES_CBC, 192),
    "aes256": (EncrId.AES_CBC, 256),
    "aes128gcm16": (EncrId.AES_GCM_16, 128),
    "aes192gcm16": (EncrId.AES_GCM_16, 192),
    "aes256gcm16": (EncrId.AES_GCM_16, 256),
    "aes128gcm128": (EncrId.AES_GCM_16, 128),
    "aes256gcm128": (EncrId.AES_GCM_16, 256),
}


DEFAULT_KEYWORD = "default"
_DEFAULT_DH = "ecp521-ecp384-curve25519-ecp256-modp2048"
_DEFAULT_GCM = "aes256gcm16-aes128gcm16"
_DEFAULT_CBC = "aes256-aes128-sha512-sha384-sha256"
# Strongest first: what we propose as initiator, and prefer as responder.
DEFAULT_IKE = (f"{_DEFAULT_GCM}-prfsha512-prfsha384-prfsha256-{_DEFAULT_DH},"
               f"{_DEFAULT_CBC}-prfsha512-prfsha384-prfsha256-{_DEFAULT_DH}")
# Without PFS first (a CHILD_SA rekey we start sends no KE), then the same with PFS.
DEFAULT_ESP = (f"{_DEFAULT_GCM},{_DEFAULT_CBC},"
               f"{_DEFAULT_GCM}-{_DEFAULT_DH},{_DEFAULT_CBC}-{_DEFAULT_DH}")


class ProposalError(ValueError):
    """A configured proposal string we cannot parse or do not implement."""


@dataclass(frozen=True)
class Suite:
    """The negotiated algorithms of one IKE or CHILD SA."""

    encr: EncrId
    key_bits: int
    integ: IntegId = IntegId.NONE
    prf: PrfId | None = None  # IKE only
    dh: DhGroup = DhGroup.NONE
    esn: EsnId = EsnId.NO_ESN
    # RFC 9370: (ADDKE transform type, chosen method) for each type the proposal carried
    addkes: tuple[tuple[TransformType, DhGroup], ...] = ()

    @property
    def aead(self) -> bool:
        return self.encr in AEAD_CIPHERS

    @property
    def additional_kes(self) -> tuple[DhGroup, ...]:
        """The IKE_INTERMEDIATE rounds to run after IKE_SA_INIT, in transform-type order."""
        return tuple(method for _, method in self.addkes if method != DhGroup.NONE)

    @property
    def name(self) -> str:
        """strongSwan-style name, e.g. ``aes256gcm16-prfsha256-ecp256`` (for status pages)."""
        parts = [f"aes{self.key_bits}gcm16" if self.aead else f"aes{self.key_bits}"]
        if self.integ != IntegId.NONE:
            parts.append(_word(_INTEG_WORDS, self.integ))
        if self.prf is not None and _INTEG_PRF.get(self.integ) != self.prf:
            parts.append(_word(_PRF_WORDS, self.prf))  # else implied, as strongSwan reads it
        if self.dh != DhGroup.NONE:
            parts.append(_word(_DH_WORDS, self.dh))
        parts += [f"ke{ttype - TransformType.ADDKE1 + 1}_{_word(_ADDKE_WORDS, method)}"
                  for ttype, method in self.addkes if method != DhGroup.NONE]
        return "-".join(parts)

    def transforms(self) -> list[Transform]:
        """Exactly one transform per type, as a responder answers (RFC 7296 §2.7)."""
        out = [Transform(TransformType.ENCR, self.encr, self.key_bits)]
        if self.integ != IntegId.NONE:
            out.append(Transform(TransformType.INTEG, self.integ))
        if self.prf is not None:
            out.append(Transform(TransformType.PRF, self.prf))
        if self.dh != DhGroup.NONE:
            out.append(Transform(TransformType.DH, self.dh))
        out += [Transform(ttype, method) for ttype, method in self.addkes]
        if self.prf is None:
            out.append(Transform(TransformType.ESN, self.esn))
        return out


def _word(table: Mapping[str, int], value: int) -> str:
    return next(k for k, v in table.items() if v == value)


@dataclass(frozen=True)
class ProposalSpec:
    """One configured proposal: acceptable algorithms per transform type, in order."""

    protocol: ProtocolId
    encrs: tuple[tuple[EncrId, int], ...]
    integs: tuple[IntegId, ...] = ()
    prfs: tuple[PrfId, ...] = ()
    dhs: tuple[DhGroup, ...] = ()
    esns: tuple[EsnId, ...] = field(default=(EsnId.NO_ESN,))
    # RFC 9370: acceptable methods per Additional Key Exchange type (index 0 = ADDKE1)
    addkes: tuple[tuple[DhGroup, ...], ...] = ()

    @property
    def aead(self) -> bool:
        return all(e in AEAD_CIPHERS for e, _ in self.encrs)

    def without_dh(self) -> ProposalSpec:
        """The spec as used in IKE_AUTH, which never carries KE (RFC 7296 §1.2)."""
        return ProposalSpec(self.protocol, self.encrs, self.integs, self.prfs, (), self.esns)

    def to_proposal(self, number: int, spi: bytes) -> Proposal:
        transforms = [Transform(TransformType.ENCR, e, bits) for e, bits in self.encrs]
        transforms += [Transform(TransformType.INTEG, i) for i in self.integs]
        transforms += [Transform(TransformType.PRF, p) for p in self.prfs]
        transforms += [Transform(TransformType.DH, d) for d in self.dhs]
        transforms += [Transform(ADDKE_TYPES[i], m)
                       for i, methods in enumerate(self.addkes) for m in methods]
        if self.protocol == ProtocolId.ESP:
            transforms += [Transform(TransformType.ESN, e) for e in self.esns]
        return Proposal(number, self.protocol, spi, transforms)


def parse_proposal(text: str, protocol: ProtocolId) -> ProposalSpec:
    """Parse strongSwan notation, e.g. ``aes256-sha256-modp2048`` or ``aes256gcm16``.

    As in strongSwan, an IKE proposal without ``prf...`` derives the PRF from the
    integrity algorithm; AEAD IKE proposals need an explicit ``prf...``.
    """
    encrs: list[tuple[EncrId, int]] = []
    integs: list[IntegId] = []
    prfs: list[PrfId] = []
    dhs: list[DhGroup] = []
    esns: list[EsnId] = []
    addkes: list[list[DhGroup]] = []
    for word in text.strip().lower().split("-"):
        if _is_addke(word):
            index, method = int(word[2]) - 1, _ADDKE_WORDS[word[4:]]
            addkes += [[] for _ in range(index + 1 - len(addkes))]
            if method in addkes[index]:
                raise ProposalError(f"{word!r} named twice in proposal {text!r}")
            addkes[index].append(method)
        elif word in _ENCR_WORDS:
            encrs.append(_ENCR_WORDS[word])
        elif word in _INTEG_WORDS:
            integs.append(_INTEG_WORDS[word])
        elif word in _PRF_WORDS:
            prfs.append(_PRF_WORDS[word])
        elif word in _DH_WORDS:
            dhs.append(_DH_WORDS[word])
        elif word in ("esn", "noesn"):
            esns.append(EsnId.ESN if word == "esn" else EsnId.NO_ESN)
        else:
            raise ProposalError(f"unsupported algorithm {word!r} in proposal {text!r}")
    if not encrs:
        raise ProposalError(f"proposal {text!r} names no encryption algorithm")
    aead = [e in AEAD_CIPHERS for e, _ in encrs]
    if any(aead) and not all(aead):
        raise ProposalError(f"proposal {text!r} mixes AEAD and classic ciphers")
    if not aead[0] and not integs:
        raise ProposalError(f"proposal {text!r} needs an integrity algorithm")
    if aead[0]:
        integs = []
    if EsnId.ESN in esns:
        raise ProposalError("extended sequence numbers are not supported")
    if protocol == ProtocolId.IKE:
        if not prfs:
            prfs = [_INTEG_PRF[i] for i in integs]
        if not prfs:
            raise ProposalError(f"AEAD IKE proposal {text!r} needs a prf")
        if not dhs:
            raise ProposalError(f"IKE proposal {text!r} needs a DH group")
        esns = []
    elif prfs:
        raise ProposalError(f"ESP proposal {text!r} cannot name a prf")
    elif addkes:
        raise ProposalError(f"additional key exchanges in ESP proposal {text!r} are not "
                            "supported")
    else:
        esns = esns or [EsnId.NO_ESN]
    return ProposalSpec(
        protocol, tuple(encrs), tuple(integs), tuple(prfs), tuple(dhs), tuple(esns),
        tuple(tuple(methods) for methods in addkes),
    )


def _is_addke(word: str) -> bool:
    """``ke1_mlkem768`` .. ``ke7_none``: an additional key exchange (RFC 9370)."""
    return (len(word) > 4 and word[:2] == "ke" and word[2] in "1234567" and word[3] == "_"
            and word[4:] in _ADDKE_WORDS)


def expand_default(text: str, protocol: ProtocolId) -> str:
    """``text`` with each ``default`` item replaced by our default list."""
    default = DEFAULT_IKE if protocol == ProtocolId.IKE else DEFAULT_ESP
    return ",".join(default if part.strip().lower() == DEFAULT_KEYWORD else part.strip()
                    for part in text.split(",") if part.strip())


def parse_proposals(text: str, protocol: ProtocolId) -> list[ProposalSpec]:
    """A comma-separated list, as in swanctl.conf ``proposals``/``esp_proposals``;
    ``default`` stands for our default list (``DEFAULT_IKE``/``DEFAULT_ESP``)."""
    specs = [parse_proposal(part, protocol)
             for part in expand_default(text, protocol).split(",") if part]
    if not specs:
        raise ProposalError("empty proposal list")
    return specs


def build_proposals(specs: list[ProposalSpec], spi: bytes) -> list[Proposal]:
    """Our SA payload: proposals numbered from 1, each carrying our inbound ``spi``."""
    return [spec.to_proposal(i + 1, spi) for i, spec in enumerate(specs)]


def _acceptable(t: Transform) -> bool:
    if t.unknown_attributes:
        return False
    if t.type == TransformType.ENCR:
        return t.id in SUPPORTED_ENCR and t.key_length in SUPPORTED_KEY_BITS
    return True


def _pick(offered: list[Transform], ttype: TransformType, mine: tuple[int, ...]) -> int | None:
    """Our first algorithm of ``ttype`` that the peer also offered."""
    theirs = {t.id for t in offered if t.type == ttype}
    return next((m for m in mine if m in theirs), None)


def _pick_dh(offered: list[Transform], spec: ProposalSpec, ignore_dh: bool,
             ke_group: int | None) -> int | None:
    """DH of a CHILD/IKE proposal: must agree on PFS (RFC 7296 §1.3.1); IKE_AUTH ignores it.
    The group of the peer's KE payload wins when both accept it: choosing another would
    cost the peer a round trip (INVALID_KE_PAYLOAD) for no gain."""
    theirs = {t.id for t in offered if t.type == TransformType.DH}
    if ignore_dh:
        return DhGroup.NONE
    if ke_group is not None and ke_group in theirs and ke_group in spec.dhs:
        return ke_group
    if spec.dhs:
        return _pick(offered, TransformType.DH, spec.dhs)
    if theirs - {DhGroup.NONE} and DhGroup.NONE not in theirs:
        return None  # the peer insists on PFS that we do not configure
    return DhGroup.NONE


def _match(spec: ProposalSpec, proposal: Proposal, ignore_dh: bool = False,
           ke_group: int | None = None) -> Suite | None:
    """The suite both sides accept, in our order of preference, or None."""
    if proposal.protocol != spec.protocol:
        return None
    offered = [t for t in proposal.transforms if _acceptable(t)]
    encr = next(
        (
            (e, bits)
            for e, bits in spec.encrs
            if any(
                t.type == TransformType.ENCR and t.id == e and t.key_length == bits
                for t in offered
            )
        ),
        None,
    )
    if encr is None:
        return None
    integ: int | None = IntegId.NONE
    if encr[0] not in AEAD_CIPHERS:
        integ = _pick(offered, TransformType.INTEG, spec.integs)
    elif any(t.type == TransformType.INTEG and t.id != IntegId.NONE for t in offered):
        return None  # RFC 5282 §8: an AEAD proposal carries no integrity algorithm
    prf = _pick(offered, TransformType.PRF, spec.prfs) if spec.prfs else None
    dh = _pick_dh(offered, spec, ignore_dh, ke_group)
    esn: int | None = EsnId.NO_ESN
    if any(t.type == TransformType.ESN for t in offered):
        esn = _pick(offered, TransformType.ESN, spec.esns)
    addkes = () if ignore_dh else _pick_addkes(proposal.transforms, offered, spec)
    if (integ is None or dh is None or esn is None or addkes is None
            or (spec.prfs and prf is None)):
        return None
    return Suite(
        encr[0],
        encr[1],
        IntegId(integ),
        PrfId(prf) if prf is not None else None,
        DhGroup(dh),
        EsnId(esn),
        addkes,
    )


def _pick_addkes(
    proposal: list[Transform], offered: list[Transform], spec: ProposalSpec
) -> tuple[tuple[TransformType, DhGroup], ...] | None:
    """One method per Additional Key Exchange type (RFC 9370 §2.2.2), or None.

    A type the peer proposes must get one of our methods, or NONE if the peer allows it;
    a type we require (no NONE among ours) must be proposed.
    """
    chosen: list[tuple[TransformType, DhGroup]] = []
    for index, ttype in enumerate(ADDKE_TYPES):
        mine = spec.addkes[index] if index < len(spec.addkes) else ()
        proposed = any(t.type == ttype for t in proposal)
        if not proposed:
            if mine and DhGroup.NONE not in mine:
                return None
            continue
        pick = _pick(offered, ttype, mine or (DhGroup.NONE,))
        if pick is None:
            return None
        chosen.append((ttype, DhGroup(pick)))
    return tuple(chosen)


def select(
    specs: list[ProposalSpec], offered: list[Proposal], *, ignore_dh: bool = False,
    ke_group: int | None = None,
) -> tuple[Proposal, Suite] | None:
    """Responder's choice (RFC 7296 §2.7): our first spec that one peer proposal satisfies.

    Returns the peer proposal (for its number and SPI) and the suite, or None, which the
    caller answers with NO_PROPOSAL_CHOSEN. ``ignore_dh`` is for the CHILD_SA inside
    IKE_AUTH, where DH transforms are meaningless (digest §4.5). ``ke_group``: the group
    of the peer's KE payload, preferred among the groups both sides accept.
    """
    for spec in specs:
        for proposal in offered:
            suite = _match(spec, proposal, ignore_dh, ke_group)
            if suite is not None:
                return proposal, suite
    return None


def accept_answer(
    specs: list[ProposalSpec], answer: list[Proposal], *, ignore_dh: bool = False
) -> Suite | None:
    """Initiator's check of the responder's single proposal: it must be one we offered."""
    if len(answer) != 1:
        return None
    chosen = answer[0]
    types = [t.type for t in chosen.transforms]
    if len(types) != len(set(types)) or not 1 <= chosen.number <= len(specs):
        return None
    return _match(specs[chosen.number - 1], chosen, ignore_dh)


def answer_proposal(proposal: Proposal, suite: Suite, spi: bytes) -> Proposal:
    """The single proposal a responder returns: peer's number, our SPI, chosen transforms."""
    return Proposal(proposal.number, proposal.protocol, spi, suite.transforms())
