"""VPN two-factor as the gateway's policy decides it, against a real SQLite store: the
password and code of a static-challenge answer, replays (also of a code the portal took),
the pushed session token, the setting, and the profile that asks for the code."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from client_profiles import accounts, reports, two_factor
from sslvpn.cli import main
from sslvpn.runtime.policy import StorePolicy
from sslvpn.runtime.vpn_login import (
    NO_CODE,
    NOT_ENROLLED,
    TOKEN_LIFETIME,
    TOKEN_REFUSED,
    WRONG_CODE,
    WRONG_PASSWORD,
    Credentials,
    static_challenge_answer,
)
from sslvpn.store import db, queries
from sslvpn.store.async_store import AsyncStore
from sslvpn.throttle import THROTTLE_ACCOUNT_FAILURES, THROTTLE_WINDOW_SECONDS
from tests.web.conftest import NEW_PASSWORD, PASSWORDS, Clock, Site, issue_for, make_site


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    made = make_site(tmp_path / "data")
    yield made
    made.engine.dispose()


def answer(password: str, code: str) -> str:
    """What OpenVPN sends for a static challenge (misc.c): SCRV1:b64(password):b64(code)."""
    return ":".join(("SCRV1", *(base64.b64encode(text.encode()).decode()
                                for text in (password, code))))


def vpn_two_factor(site: Site, on: bool = True) -> str:
    result = CliRunner().invoke(main, ["--data-dir", str(site.paths.data_dir), "user",
                                       "2fa-require", "--vpn", *([] if on else ["--off"])],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def enrol(site: Site, name: str) -> str:
    secret = two_factor.new_secret()
    with db.session(site.engine, write=True) as s:
        queries.get_user(s, name=name).totp_secret = secret
    return secret


async def test_the_password_and_a_fresh_code_admit_and_get_a_token(site: Site) -> None:
    clock = Clock()
    policy = StorePolicy(AsyncStore(site.engine), clock=clock)
    serial, other_serial = issue_for(site, "alice"), issue_for(site, "alice", "laptop")
    secret = enrol(site, "alice")
    assert (await policy.authorize(serial)).refusal is None  # the setting is off
    assert "not enrolled, cannot connect until they are: bob, root" in vpn_two_factor(site)

    code = two_factor.code_at(secret, clock.now)
    good = Credentials("alice", answer(PASSWORDS["alice"], code))
    for credentials, refusal in (
            (Credentials(), NO_CODE),  # an old profile, without auth-user-pass
            (Credentials("alice", PASSWORDS["alice"]), NO_CODE),
            (Credentials("bob", good.password), WRONG_PASSWORD),
            (Credentials("alice", answer("not-her-password", code)), WRONG_PASSWORD),
            (Credentials("alice", answer(PASSWORDS["alice"], "000000")), WRONG_CODE),
            (Credentials("alice", "SCRV1:%%%:@@@"), NO_CODE)):
        auth = await policy.authorize(serial, credentials)
        assert (auth.refusal, auth.auth_token) == (refusal, None), credentials
    admitted = await policy.authorize(serial, good)
    assert admitted.refusal is None and admitted.auth_token is not None
    assert (await policy.authorize(serial, good)).refusal == WRONG_CODE  # a replay

    token = admitted.auth_token
    with_token = await policy.authorize(serial, Credentials("alice", token))
    assert (with_token.refusal, with_token.auth_token) == (None, token)  # no new code asked
    for bad in (token[:-2] + "xx", token.replace(":", ":1", 1)):
        assert (await policy.authorize(serial, Credentials("alice", bad))).refusal \
            == TOKEN_REFUSED
    assert (await policy.authorize(other_serial, Credentials("alice", token))).refusal \
        == TOKEN_REFUSED  # made for another certificate
    clock.now += TOKEN_LIFETIME
    assert (await policy.authorize(serial, Credentials("alice", token))).refusal \
        == TOKEN_REFUSED  # expired


@dataclass
class Alice:
    """alice with a certificate and an authenticator, VPN two-factor on."""

    clock: Clock
    policy: StorePolicy
    serial: str
    secret: str


@pytest.fixture
def alice(site: Site) -> Alice:
    clock = Clock()
    made = Alice(clock, StorePolicy(AsyncStore(site.engine), clock=clock),
                 issue_for(site, "alice"), enrol(site, "alice"))
    vpn_two_factor(site)
    return made


async def test_a_new_password_or_a_reset_ends_the_tokens(site: Site, alice: Alice) -> None:
    policy, serial, clock = alice.policy, alice.serial, alice.clock
    code = two_factor.code_at(alice.secret, clock.now)
    token = (await policy.authorize(
        serial, Credentials("alice", answer(PASSWORDS["alice"], code)))).auth_token
    assert token is not None
    accounts.set_password(site.engine, name="alice", password=NEW_PASSWORD, actor="t")
    assert (await policy.authorize(serial, Credentials("alice", token))).refusal \
        == TOKEN_REFUSED
    two_factor.reset_account(site.engine, name="alice", actor="t")
    assert (await policy.authorize(serial, Credentials("alice", token))).refusal \
        == NOT_ENROLLED
    vpn_two_factor(site, on=False)
    assert (await policy.authorize(serial, Credentials())).refusal is None


async def test_a_code_the_portal_took_is_refused_on_the_vpn(site: Site, alice: Alice) -> None:
    policy, serial, clock, secret = alice.policy, alice.serial, alice.clock, alice.secret
    code = two_factor.code_at(secret, clock.now)
    step = two_factor.matching_step(secret, code, clock.now)
    assert step is not None
    with db.session(site.engine, write=True) as s:
        user = queries.get_user(s, name="alice")
        assert user.id is not None and queries.accept_totp_step(s, user_id=user.id, step=step)
    refused = await policy.authorize(serial, Credentials("alice", answer(PASSWORDS["alice"],
                                                                         code)))
    assert refused.refusal == WRONG_CODE


def test_static_challenge_answers_are_parsed_strictly() -> None:
    assert static_challenge_answer(answer("pw:with:colons", "123456")) == ("pw:with:colons",
                                                                          "123456")
    for bad in ("", "plain", "SCRV1:", "SCRV1:a", "SCRV1:!!:AA==", "SCRV1:QQ==:QQ==:QQ==",
                "SCRV1:/w==:MTIz"):  # the last: not UTF-8
        assert static_challenge_answer(bad) is None, bad


def test_profiles_ask_for_the_code_only_with_the_setting(site: Site) -> None:
    serial = issue_for(site, "alice")

    def profile() -> str:
        return reports.render_profile(site.engine, site.paths, serial=serial,
                                      actor="t").text

    assert "auth-user-pass" not in profile()
    vpn_two_factor(site)
    lines = profile().splitlines()
    assert "auth-user-pass" in lines
    assert 'static-challenge "Code from your authenticator app" 1' in lines


async def test_wrong_codes_are_throttled_per_user_and_source(alice: Alice) -> None:
    policy, serial, clock, secret = alice.policy, alice.serial, alice.clock, alice.secret
    code = two_factor.code_at(secret, clock.now)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    for _ in range(THROTTLE_ACCOUNT_FAILURES):
        refused = await policy.authorize(serial, Credentials(
            "alice", answer(PASSWORDS["alice"], wrong), "198.51.100.7"))
        assert refused.refusal == WRONG_CODE
    right = answer(PASSWORDS["alice"], code)
    waits = await policy.authorize(serial, Credentials("alice", right, "198.51.100.7"))
    assert waits.refusal == "too many wrong passwords or codes: try again in 900 s"
    # the owner, elsewhere, is not locked out by someone else's guesses
    owner = await policy.authorize(serial, Credentials("alice", right, "203.0.113.4"))
    assert owner.refusal is None and owner.auth_token
    clock.now += THROTTLE_WINDOW_SECONDS + two_factor.STEP_SECONDS * 2
    fresh = answer(PASSWORDS["alice"], two_factor.code_at(secret, clock.now))
    assert (await policy.authorize(serial, Credentials("alice", fresh, "198.51.100.7"))
            ).refusal is None
