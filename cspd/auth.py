"""Passwords, session tokens and the slow-down of repeated failed logins.

Passwords are kept as scrypt hashes and tokens as SHA-256 hashes, so a copy of
the state database gives neither a password nor a usable token.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass

from cspd.errors import Unauthorized
from cspd.store import Store, TokenRow

log = logging.getLogger("cspd.auth")

# scrypt cost: N=2**14, r=8, p=1 takes about 16 MiB and tens of milliseconds,
# the parameters RFC 7914 suggests for interactive logins.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1

# A hash to compare against when the user does not exist, so that a login for
# an unknown name costs as much time as one with a wrong password.
_DUMMY_HASH: str | None = None


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    return "$".join(
        [
            "scrypt",
            str(SCRYPT_N),
            str(SCRYPT_R),
            str(SCRYPT_P),
            base64.b64encode(salt).decode(),
            base64.b64encode(digest).decode(),
        ]
    )


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt_b64, digest_b64 = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    digest = hashlib.scrypt(
        password.encode(),
        salt=base64.b64decode(salt_b64),
        n=int(n),
        r=int(r),
        p=int(p),
        dklen=32,
    )
    return hmac.compare_digest(digest, base64.b64decode(digest_b64))


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedToken:
    row: TokenRow
    session_token: str


class FailedLogins:
    """Delay logins from a peer in proportion to its recent failures.

    Each failure within ``window`` seconds adds ``step`` seconds, up to
    ``max_delay``; a success clears the peer. The count is kept in memory only,
    so a daemon restart clears it.
    """

    def __init__(self, step: float, max_delay: float = 10.0, window: float = 300.0) -> None:
        self.step = step
        self.max_delay = max_delay
        self.window = window
        self._failures: dict[str, list[float]] = {}

    def delay_for(self, peer: str) -> float:
        now = time.monotonic()
        recent = [t for t in self._failures.get(peer, []) if now - t < self.window]
        if recent:
            self._failures[peer] = recent
        else:
            self._failures.pop(peer, None)
        return min(self.max_delay, self.step * len(recent))

    def record_failure(self, peer: str) -> None:
        self._failures.setdefault(peer, []).append(time.monotonic())
        # Bound memory when many peers fail: forget the oldest peers first.
        if len(self._failures) > 10000:
            oldest = sorted(self._failures, key=lambda p: self._failures[p][-1])[:1000]
            for key in oldest:
                del self._failures[key]

    def record_success(self, peer: str) -> None:
        self._failures.pop(peer, None)


class Authenticator:
    """Checks logins and tokens against the state store."""

    def __init__(self, store: Store, lifetime: int, failed_login_delay: float) -> None:
        self.store = store
        self.lifetime = lifetime
        self.failures = FailedLogins(step=failed_login_delay)

    async def login(self, username: str, password: str, array_ip: str, peer: str) -> IssuedToken:
        """Issue a token for a valid username and password; raises Unauthorized otherwise."""
        delay = self.failures.delay_for(peer)
        if delay:
            await asyncio.sleep(delay)

        user = await self.store.get_user(username)
        stored = user.password_hash if user else _dummy_hash()
        valid = await asyncio.to_thread(verify_password, password, stored)
        if user is None or not valid:
            self.failures.record_failure(peer)
            log.warning("failed login", extra={"username": username, "peer": peer})
            raise Unauthorized("invalid username or password")
        self.failures.record_success(peer)

        now = int(time.time())
        session_token = secrets.token_hex(16)
        row = TokenRow(
            id=secrets.token_hex(21),
            token_hash=hash_token(session_token),
            username=username,
            array_ip=array_ip,
            created=now,
            expires=now + self.lifetime,
        )
        await self.store.purge_expired_tokens(now)
        await self.store.add_token(row)
        log.info("token issued", extra={"username": username, "token_id": row.id, "peer": peer})
        return IssuedToken(row=row, session_token=session_token)

    async def check(self, session_token: str) -> TokenRow:
        """Return the token row for a valid, unexpired token; raises Unauthorized."""
        if not session_token:
            raise Unauthorized("missing x-auth-token")
        row = await self.store.get_token_by_hash(hash_token(session_token))
        if row is None:
            raise Unauthorized("unknown token")
        if row.expires <= int(time.time()):
            raise Unauthorized("expired token")
        return row


def _dummy_hash() -> str:
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = hash_password(secrets.token_hex(8))
    return _DUMMY_HASH
