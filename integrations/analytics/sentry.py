"""Sentry error reporting with secrets scrubbed before anything leaves the process.

`scrub_event` is a pure function over a Sentry event dict; `init_sentry` installs it as
`before_send` (and for transactions), with request bodies never attached and the SDK's own
recursive denylist scrubber as a second line. Scrubbed: values under sensitive keys anywhere in
the event (passwords, tokens, Authorization/Cookie headers, card fields, emails, one-time codes,
IP addresses) and, inside any text, bearer/basic credentials, JWTs, `key=value` secrets (query
strings, reprs, log lines), email addresses and card numbers (Luhn-checked).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final, cast

import sentry_sdk
from sentry_sdk.integrations.starlette import StarletteIntegration
from sentry_sdk.scrubber import EventScrubber

if TYPE_CHECKING:
    from sentry_sdk.types import Event, Hint

FILTERED: Final = "[Filtered]"  # the marker Sentry itself uses
_MAX_DEPTH: Final = 64

# A key is sensitive if, lower-cased with `-`/space as `_`, it contains one of these...
_SENSITIVE_PARTS: Final = (
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "cookie",
    "credential",
    "api_key",
    "apikey",
    "private_key",
    "privatekey",
    "session",
    "csrf",
    "xsrf",
    "email",
    "card_number",
    "cardnumber",
    "signature",
    "crypted",  # the payment gateway's encrypted callbacks
    "cipher",
    "ip_address",
    "forwarded_for",
    "remote_addr",
)
# ...or has one of these as a whole `_`-separated word...
_SENSITIVE_WORDS: Final = frozenset(
    {"auth", "pwd", "pin", "pan", "cvv", "cvc", "card", "iban", "jwt", "otp", "dsn", "salt"}
)
# ...or is exactly one of these (a bare `code` is a one-time code; `status_code` is not).
_SENSITIVE_EXACT: Final = frozenset({"code", "verification_code", "reset_code", "one_time_code"})

_KEY_WORDS = (
    r"[\w.-]*(?:password|passwd|pwd|secret|token|api_?key|authorization|cookie|cvv|cvc"
    r"|card_?number)[\w.-]*"
)
_TEXT_PATTERNS: Final = (
    # password=…, "refresh_token": "…", Authorization: Basic … in URLs, reprs and log lines
    (
        re.compile(
            rf"(?i)\b({_KEY_WORDS})(\s*['\"]?\s*[=:]\s*['\"]?)"
            r"((?:(?:bearer|basic|digest|token)\s+)?[^&'\",;\s}\])]+)"
        ),
        rf"\1\2{FILTERED}",
    ),
    # `Bearer abc…` anywhere (Basic ones only with their header name, above)
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{6,}"), rf"\1 {FILTERED}"),
    # JSON Web Tokens anywhere
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), FILTERED),
    # one-time codes in query strings: ?code=123456 (a bare `code` key elsewhere is too common)
    (re.compile(r"(?i)(^|[?&])(code|otp)=[^&#\s]*"), rf"\1\2={FILTERED}"),
    # email addresses
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"), FILTERED),
)
_CARD_CANDIDATE: Final = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")

scrub_failures = 0  # events dropped because scrubbing itself failed (never sent unscrubbed)


def scrub_event(event: dict[str, Any]) -> dict[str, Any]:
    """A copy of `event` with secrets and personal data replaced by `[Filtered]`."""
    scrubbed = _scrub(event, 0)
    assert isinstance(scrubbed, dict)
    return scrubbed


def init_sentry(dsn: str | None, *, environment: str, release: str) -> bool:
    """Start the Sentry SDK (Starlette integration) when a DSN is set; False and no-op if not."""
    if not dsn:
        return False
    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        release=release,
        send_default_pii=False,
        # Logins, payments and one-time codes travel in request bodies; a stack trace, route
        # and scrubbed headers are enough to debug, so bodies never leave the process.
        max_request_body_size="never",
        before_send=_before_send,
        before_send_transaction=_before_send,
        event_scrubber=EventScrubber(recursive=True),
        integrations=[StarletteIntegration()],
    )
    return True


def _before_send(event: Event, hint: Hint) -> Event | None:
    global scrub_failures
    try:
        return cast("Event", scrub_event(cast("dict[str, Any]", event)))
    except Exception:  # dropping one report beats sending it unscrubbed
        scrub_failures += 1
        return None


def _scrub(value: Any, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        return FILTERED
    if isinstance(value, str):
        return _scrub_text(value)
    if isinstance(value, dict):
        return {
            key: FILTERED if _is_sensitive_key(key) else _scrub(item, depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        # Headers and cookies sometimes come as [name, value] pairs.
        if len(value) == 2 and isinstance(value[0], str) and _is_sensitive_key(value[0]):
            return [value[0], FILTERED]
        return [_scrub(item, depth + 1) for item in value]
    return value


def _is_sensitive_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    normal = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower().replace("-", "_").replace(" ", "_")
    if normal in _SENSITIVE_EXACT or any(part in normal for part in _SENSITIVE_PARTS):
        return True
    return any(word in _SENSITIVE_WORDS for word in normal.split("_"))


def _scrub_text(text: str) -> str:
    for pattern, replacement in _TEXT_PATTERNS:
        text = pattern.sub(replacement, text)
    return _CARD_CANDIDATE.sub(_card_or_keep, text)


def _card_or_keep(match: re.Match[str]) -> str:
    digits = [int(char) for char in match.group(0) if char.isdigit()]
    return FILTERED if _luhn_valid(digits) else match.group(0)


def _luhn_valid(digits: list[int]) -> bool:
    total = 0
    for index, digit in enumerate(reversed(digits)):
        if index % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0
