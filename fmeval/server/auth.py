"""Passwords, login sessions, CSRF tokens and API tokens.

Passwords are hashed with scrypt (``hashlib.scrypt``: memory-hard, in the
standard library, so the KDF needs no compiled extra); the stored string holds
its parameters so they can be raised later. Session cookies and API tokens are
256-bit random values; the database keeps only their SHA-256, so a leaked
database opens no account. CSRF tokens are not stored at all: each is an HMAC
of its cookie under the server's secret. An API token is shown once, at creation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
TOKEN_PREFIX = "fmv_"


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(key).decode()}"


def verify_password(password: str, stored: str | None) -> bool:
    if not stored or not stored.startswith("scrypt$"):
        return False
    _, n, r, p, salt, key = stored.split("$")
    got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                         dklen=len(base64.b64decode(key)))
    return hmac.compare_digest(got, base64.b64decode(key))


_DUMMY: list[str] = []


def dummy_hash() -> str:
    """A password hash of nothing anyone typed: verified against when the email has no account, so a
    login takes the same scrypt time whether or not the account exists."""
    if not _DUMMY:
        _DUMMY.append(hash_password(secrets.token_urlsafe(16)))
    return _DUMMY[0]


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def new_api_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def form_token(key: str, cookie: str) -> str:
    """The CSRF token of a form shown before login: an HMAC of the visitor's pre-session cookie under
    the server's secret, so it is bound to that cookie and cannot be minted without the secret."""
    return hmac.new(key.encode(), b"csrf:" + cookie.encode(), hashlib.sha256).hexdigest()


def session_token(key: str, cookie: str) -> str:
    """The CSRF token of a logged-in session: an HMAC of the session cookie under the server's secret.
    Derived on each request rather than stored, so the database (which keeps only the cookie's SHA-256)
    holds nothing that forges a session's forms; a different label from :func:`form_token` keeps the
    two kinds of token apart."""
    return hmac.new(key.encode(), b"session:" + cookie.encode(), hashlib.sha256).hexdigest()


def same(given: object, expected: str | None) -> bool:
    """Constant-time comparison of a submitted token with the expected one (False for missing values)."""
    if not isinstance(given, str) or not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())
