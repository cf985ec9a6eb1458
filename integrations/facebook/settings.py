"""Facebook settings, read from the environment; absent page or token = import is off."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FacebookSettings:
    graph_url: str = "https://graph.facebook.com"
    api_version: str = "21.0"
    page_id: str | None = None
    page_token: str | None = field(default=None, repr=False)
    app_secret: str | None = field(default=None, repr=False)
    verify_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> FacebookSettings:
        return cls(
            graph_url=(env.get("FACEBOOK_GRAPH_URL") or "https://graph.facebook.com").rstrip("/"),
            api_version=(env.get("FACEBOOK_API_VERSION") or "21.0").lstrip("v"),
            page_id=env.get("FACEBOOK_PAGE_ID") or None,
            page_token=env.get("FACEBOOK_PAGE_TOKEN") or None,
            app_secret=env.get("FACEBOOK_APP_SECRET") or None,
            verify_token=env.get("FACEBOOK_VERIFY_TOKEN") or None,
        )

    @property
    def can_read(self) -> bool:
        return bool(self.page_token)

    @property
    def can_receive_webhooks(self) -> bool:
        return bool(self.app_secret and self.verify_token)
