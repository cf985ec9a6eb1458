"""One-time codes (email verification, password reset): six digits, stored only as a keyed
hash, expiring, single use, at most five wrong tries, and only the latest one counts.

Kept in the cache backend: Redis with TTLs in production, in process in the embedded default
(a code lost to a restart is simply requested again).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import orjson

from storage.cache import Cache

CODE_SECONDS = 600
MAX_WRONG_TRIES = 5
RESENDS_PER_WINDOW = 3
RESEND_WINDOW_SECONDS = 600


class CodeBook:
    def __init__(self, cache: Cache, secret: str) -> None:
        self._cache = cache
        self._key = hmac.new(secret.encode(), b"freshroots-one-time-codes", hashlib.sha256).digest()

    def _digest(self, purpose: str, user_id: str, code: str) -> str:
        message = f"{purpose}:{user_id}:{code}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    async def may_send(self, purpose: str, user_id: str) -> bool:
        """Throttle resends: a few per window, so nobody floods a mailbox through us."""
        sent = await self._cache.incr(f"otp-sent:{purpose}:{user_id}", RESEND_WINDOW_SECONDS)
        return sent <= RESENDS_PER_WINDOW

    async def issue(self, purpose: str, user_id: str) -> str:
        code = f"{secrets.randbelow(1_000_000):06d}"
        record = {"hash": self._digest(purpose, user_id, code)}
        # A new code replaces the old one and its count of wrong tries.
        await self._cache.delete(f"otp-fails:{purpose}:{user_id}")
        await self._cache.set(f"otp:{purpose}:{user_id}", orjson.dumps(record), CODE_SECONDS)
        return code

    async def redeem(self, purpose: str, user_id: str, code: str) -> bool:
        """True once for the right, live code; every wrong try counts towards the limit."""
        key = f"otp:{purpose}:{user_id}"
        stored = await self._cache.get(key)
        if stored is None:
            return False
        fails_key = f"otp-fails:{purpose}:{user_id}"
        failures = await self._cache.get(fails_key)
        if failures is not None and int(failures) >= MAX_WRONG_TRIES:
            await self._cache.delete(key)
            return False
        expected = orjson.loads(stored)["hash"]
        if not hmac.compare_digest(expected, self._digest(purpose, user_id, code)):
            if await self._cache.incr(fails_key, CODE_SECONDS) >= MAX_WRONG_TRIES:
                await self._cache.delete(key)  # the fifth wrong try kills the code
            return False
        # Single use, even when two confirmations race: only one of them takes the code.
        return await self._cache.pop(key) is not None
