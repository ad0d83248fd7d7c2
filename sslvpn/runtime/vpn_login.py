"""Two-factor on the VPN itself: the password and TOTP code a client sends in key-method 2,
and the session token pushed back so that renegotiations and short reconnects do not ask
for a code again.

With the gateway setting on, profiles carry ``auth-user-pass`` and ``static-challenge``:
OpenVPN 2.6 and OpenVPN Connect then send the user name and
``SCRV1:base64(password):base64(code)`` as the password (openvpn misc.c
get_user_pass_cr / static_challenge; openvpn3 ClientCreds). A right password and a code of
a step not taken before (the same conditional UPDATE as the portal's, so a code used on the
portal or on another node is refused) admit the client, which is pushed
``auth-token TOKEN`` (like the server's ``--auth-gen-token``): the client sends the token
instead of its password from then on, in renegotiations and reconnects.

The token is stateless, so every worker and node checks it alike: an HMAC-SHA256 over the
user, the certificate's serial and the time it was made, keyed by the user's TOTP secret and
password hash. A new password, a two-factor reset or turning it off ends every token; each
dies ``TOKEN_LIFETIME`` after it was made (reconnecting with it does not extend it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass, field

from sslvpn.credentials import matching_step, verify_password

SCRV1 = "SCRV1:"  # a static-challenge answer (openvpn misc.c)
TOKEN_PREFIX = "SVT1:"  # noqa: S105 (a format marker, not a secret)
TOKEN_LIFETIME = 12 * 3600  # seconds: a working day of reconnects without a new code
_TOKEN_LABEL = b"sslvpn vpn session token v1"

WRONG_PASSWORD = "wrong user name or password"  # noqa: S105 (a refusal text)
WRONG_CODE = "wrong or used two-factor code"
NO_CODE = "a two-factor code is needed: import your profile again (it asks for the code)"
NOT_ENROLLED = "two-factor sign-in is not set up: turn it on in the portal first"
GUESSES = (WRONG_PASSWORD, WRONG_CODE)  # what counts in the failure throttle
TOKEN_REFUSED = "session token expired or invalid: connect again with your code"  # noqa: S105


@dataclass(frozen=True)
class Credentials:
    """What the client sent in key-method 2 (empty when its profile has no auth-user-pass),
    and the address it came from (for the failure throttle)."""

    username: str = ""
    password: str = field(default="", repr=False)
    source: str = ""


NO_CREDENTIALS = Credentials()


@dataclass(frozen=True)
class VpnAccount:
    """The certificate owner's secrets, read from the store for this check only."""

    user_id: int
    name: str
    password_hash: str | None = field(repr=False)
    totp_secret: str | None = field(repr=False)


@dataclass(frozen=True)
class LoginCheck:
    """The verdict: a refusal, or a TOTP step still to claim (the replay check, a store
    write) and the token to push."""

    refusal: str | None = None
    step: int | None = None
    token: str | None = field(default=None, repr=False)


def static_challenge_answer(password: str) -> tuple[str, str] | None:
    """The password and the code of an ``SCRV1:`` answer, None when it is not one."""
    if not password.startswith(SCRV1):
        return None
    parts = password[len(SCRV1):].split(":")
    if len(parts) != 2:
        return None
    try:
        secret, code = (base64.b64decode(part, validate=True).decode() for part in parts)
    except (binascii.Error, UnicodeDecodeError):
        return None
    return secret, code


def _mac(account: VpnAccount, serial: str, issued: int) -> str:
    key = hashlib.sha256(b"\0".join((
        _TOKEN_LABEL, (account.totp_secret or "").encode(),
        (account.password_hash or "").encode()))).digest()
    message = f"{account.name}\n{serial.lower()}\n{issued}".encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def make_token(account: VpnAccount, serial: str, now: float) -> str:
    """A token for this user and certificate, made ``now``."""
    issued = int(now)
    return f"{TOKEN_PREFIX}{issued}:{_mac(account, serial, issued)}"


def token_valid(account: VpnAccount, serial: str, token: str, now: float) -> bool:
    """True for a token made for this user, certificate, secret and password, not expired."""
    issued_text, _, mac = token[len(TOKEN_PREFIX):].partition(":")
    if not token.startswith(TOKEN_PREFIX) or not issued_text.isdigit() or len(issued_text) > 12:
        return False
    issued = int(issued_text)
    if not issued <= now < issued + TOKEN_LIFETIME:
        return False
    return hmac.compare_digest(mac, _mac(account, serial, issued))


def check_login(account: VpnAccount, credentials: Credentials, *, serial: str,
                now: float) -> LoginCheck:
    """Judge a client's credentials for the certificate ``serial`` of ``account``. Slow
    (an argon2 verify): run it in a thread."""
    if account.totp_secret is None:
        return LoginCheck(NOT_ENROLLED)
    is_token = credentials.password.startswith(TOKEN_PREFIX)
    answer = None if is_token else static_challenge_answer(credentials.password)
    if not is_token and answer is None:
        return LoginCheck(NO_CODE)
    if credentials.username != account.name:
        return LoginCheck(WRONG_PASSWORD)
    if answer is None:
        if token_valid(account, serial, credentials.password, now):
            return LoginCheck(token=credentials.password)
        return LoginCheck(TOKEN_REFUSED)
    password, code = answer
    if not verify_password(account.password_hash, password):
        return LoginCheck(WRONG_PASSWORD)
    step = matching_step(account.totp_secret, code, now)
    if step is None:
        return LoginCheck(WRONG_CODE)
    return LoginCheck(step=step, token=make_token(account, serial, now))
