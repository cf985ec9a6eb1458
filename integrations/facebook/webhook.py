"""Page webhooks: the subscription handshake, the signature check, and what changed."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any


def verify_signature(app_secret: str, raw_body: bytes, header_value: str | None) -> bool:
    """`X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body with the app secret>`."""
    if not header_value or not header_value.startswith("sha256="):
        return False
    expected = hmac.new(app_secret.encode(), raw_body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header_value[len("sha256=") :].strip().lower())


def handshake(params: Mapping[str, str], verify_token: str) -> str | None:
    """The challenge to echo when Facebook verifies our subscription, else None."""
    if params.get("hub.mode") != "subscribe":
        return None
    if not hmac.compare_digest(params.get("hub.verify_token", ""), verify_token):
        return None
    return params.get("hub.challenge")


def changed_posts(payload: Any) -> list[tuple[str, str]]:
    """(post id, verb) for every feed change in a Page webhook payload."""
    found: list[tuple[str, str]] = []
    if not isinstance(payload, dict):
        return found
    for entry in payload.get("entry") or []:
        for change in (entry.get("changes") or []) if isinstance(entry, dict) else []:
            value = change.get("value") if isinstance(change, dict) else None
            if change.get("field") != "feed" or not isinstance(value, dict):
                continue
            post_id = value.get("post_id")
            if isinstance(post_id, str) and value.get("item") in (None, "status", "post", "photo"):
                found.append((post_id, str(value.get("verb") or "add")))
    return found
