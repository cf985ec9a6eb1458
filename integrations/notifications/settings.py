"""Notification channel settings, read from the environment.

Expo push needs no credentials (the access token is only required once "enhanced push
security" is switched on in the Expo dashboard), so it always has settings. Email is off when
`SMTP_HOST` is unset. Secrets never appear in `repr()`, so settings can be logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_EXPO_URL = "https://exp.host"
DEFAULT_SENDER = "Fresh Roots <no-reply@freshroots.mu>"
_FALSE = frozenset({"0", "false", "no", "off"})


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, not {raw!r}") from None


@dataclass(frozen=True)
class ExpoSettings:
    base_url: str = DEFAULT_EXPO_URL
    access_token: str | None = field(default=None, repr=False)
    # Expo recommends reading receipts about 15 minutes after sending; they vanish after 24 h.
    receipt_delay_seconds: int = 900

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> ExpoSettings:
        return cls(
            base_url=(env.get("EXPO_PUSH_URL") or DEFAULT_EXPO_URL).rstrip("/"),
            access_token=env.get("EXPO_ACCESS_TOKEN") or None,
            receipt_delay_seconds=_int(env, "PUSH_RECEIPT_DELAY_SECONDS", 900),
        )


@dataclass(frozen=True)
class EmailSettings:
    host: str
    port: int = 587
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    starttls: bool = True
    sender: str = DEFAULT_SENDER
    timeout_seconds: float = 15.0

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> EmailSettings | None:
        """None when `SMTP_HOST` is unset: email is off and the rest of the server runs."""
        host = (env.get("SMTP_HOST") or "").strip()
        if not host:
            return None
        return cls(
            host=host,
            port=_int(env, "SMTP_PORT", 587),
            user=env.get("SMTP_USER") or None,
            password=env.get("SMTP_PASSWORD") or None,
            # On by default: relays (SES, Mailgun) want it on 587, and plain text is opt-out.
            starttls=(env.get("SMTP_STARTTLS") or "true").strip().lower() not in _FALSE,
            sender=env.get("EMAIL_FROM") or DEFAULT_SENDER,
        )
