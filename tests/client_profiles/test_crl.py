"""The CRL is signed into the store and published from it: disagreements found and mended."""

from __future__ import annotations

import pytest
from cryptography import x509
from sqlmodel import select

from client_profiles import crl, lifecycle
from client_profiles.pki import crl_number_of
from sslvpn.store import ConflictError
from sslvpn.store.db import session
from sslvpn.store.models import AuditEntry, SignedCrl, utcnow
from sslvpn.store.queries import get_signed_crl, mark_revoked, save_signed_crl
from tests.client_profiles.conftest import Gateway


def _listed(gateway: Gateway) -> set[str]:
    pem = x509.load_pem_x509_crl(gateway.paths.crl_pem.read_bytes())
    der = x509.load_der_x509_crl(gateway.paths.crl_der.read_bytes())
    assert pem == der
    return {format(entry.serial_number, "x") for entry in pem}


def test_fresh_folder_agrees_and_the_store_holds_crl_one(gateway: Gateway) -> None:
    assert crl.crl_disagreement(gateway.paths, gateway.engine) is None
    with session(gateway.engine, write=False) as s:
        stored = get_signed_crl(s)
    assert stored is not None and stored.number == 1
    assert gateway.paths.crl_der.read_bytes() == stored.der


def test_stale_or_missing_files_are_named_and_published_again(gateway: Gateway) -> None:
    old_pem = gateway.paths.crl_pem.read_bytes()
    row = lifecycle.issue_client(gateway.engine, gateway.paths, user_name="alice", actor="t")
    lifecycle.revoke(gateway.engine, gateway.paths, serial=row.serial, actor="t")
    gateway.paths.crl_pem.write_bytes(old_pem)  # as if killed before crl.pem was replaced
    problem = crl.crl_disagreement(gateway.paths, gateway.engine)
    assert problem == "crl.pem does not hold CRL 2 of the store"
    gateway.paths.crl_der.unlink()
    problem = crl.crl_disagreement(gateway.paths, gateway.engine)
    assert problem == "crl.der and crl.pem do not hold CRL 2 of the store"
    assert crl.republish_crl(gateway.paths, gateway.engine) == problem
    assert crl.crl_disagreement(gateway.paths, gateway.engine) is None
    assert _listed(gateway) == {row.serial}
    assert crl.republish_crl(gateway.paths, gateway.engine) is None


def test_a_stored_crl_that_lags_the_revocations_is_signed_again(gateway: Gateway) -> None:
    row = lifecycle.issue_client(gateway.engine, gateway.paths, user_name="alice", actor="t")
    with session(gateway.engine, write=True) as s:  # revoked without signing a CRL
        mark_revoked(s, serial=row.serial, reason="keyCompromise", at=utcnow())
    problem = crl.crl_disagreement(gateway.paths, gateway.engine)
    assert problem == f"the stored CRL 1 omits revoked {row.serial}"
    assert crl.republish_crl(gateway.paths, gateway.engine, actor="t") == problem
    assert _listed(gateway) == {row.serial}
    assert crl_number_of(gateway.paths.crl_pem.read_bytes()) == 2
    with session(gateway.engine, write=False) as s:
        audit = s.exec(select(AuditEntry).where(AuditEntry.action == "crl.republish")).one()
    assert (audit.target, audit.detail) == ("2", problem)


def test_the_first_stored_crl_goes_up_from_the_one_on_disk(gateway: Gateway) -> None:
    """A store from before CRLs were kept in it: numbering continues from crl.pem."""
    for _ in range(3):
        crl.refresh_crl(gateway.paths, gateway.engine, force=True)
    with session(gateway.engine, write=True) as s:
        s.delete(s.exec(select(SignedCrl)).one())
    assert crl.crl_disagreement(gateway.paths, gateway.engine) == "the store holds no signed CRL"
    crl.republish_crl(gateway.paths, gateway.engine)
    assert crl_number_of(gateway.paths.crl_pem.read_bytes()) == 5


def test_the_stored_crl_number_only_goes_up(gateway: Gateway) -> None:
    with (
        session(gateway.engine, write=True) as s,
        pytest.raises(ConflictError, match="CRL number 1 is not above the stored 1"),
    ):
        save_signed_crl(s, number=1, der=b"x", last_update=utcnow(), next_update=utcnow())


def test_mend_reports_what_it_could_not_mend(gateway: Gateway) -> None:
    """serve's start and `cert list` go on (and say why) when the files cannot be written."""
    assert crl.mend_crl(gateway.paths, gateway.engine, actor="t") == crl.Mending(None)
    gateway.paths.crl_der.unlink()
    gateway.paths.crl_der.mkdir()
    mended = crl.mend_crl(gateway.paths, gateway.engine, actor="t")
    assert mended.problem == "crl.der does not hold CRL 1 of the store"
    assert mended.failure is not None and "Is a directory" in mended.failure
