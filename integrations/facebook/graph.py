"""A Graph API client for a Page's feed, over httpx, that respects Facebook's rate limits.

- Paging: follow `paging.next` until it is absent (a page may be empty and still have one);
  cursors are never stored, a re-import simply starts again and skips what it already has.
- Throttling: every answer carries `X-App-Usage` and `X-Business-Use-Case-Usage` (percent of
  the allowance used); we slow down well before 100 %. Rate-limit errors (codes 4, 17, 32,
  613, 80001…) wait for `estimated_time_to_regain_access` (minutes) or back off; code 190
  (token expired or revoked) stops with a message for the admin.
- 5xx and timeouts retry with exponential backoff and full jitter, a bounded number of times.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import httpx
import orjson

from integrations.facebook.settings import FacebookSettings

FEED_FIELDS = "message,created_time,full_picture,permalink_url,attachments{media,subattachments}"
RATE_LIMIT_CODES = {4, 17, 32, 613} | set(range(80000, 80015))
SLOW_DOWN_AT = 75.0  # percent of an allowance; above it, pause in proportion
MAX_WAIT_SECONDS = 15 * 60


class FacebookError(Exception):
    """The Graph API refused the request (not worth retrying as is)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class FacebookTokenExpired(FacebookError):
    """Code 190: the Page token expired or was revoked; an admin must issue a new one."""


class FacebookUnavailable(FacebookError):
    """Still failing (5xx, timeouts, rate limits) after the retry bound; try later."""


def _usage_percent(headers: httpx.Headers) -> tuple[float, float]:
    """(highest usage %, seconds until access returns) from the two usage headers."""
    highest, regain = 0.0, 0.0
    for name in ("x-app-usage", "x-business-use-case-usage"):
        raw = headers.get(name)
        if not raw:
            continue
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        blocks: list[dict[str, Any]] = []
        if name == "x-app-usage" and isinstance(data, dict):
            blocks = [data]
        elif isinstance(data, dict):
            blocks = [
                b
                for value in data.values()
                if isinstance(value, list)
                for b in value
                if isinstance(b, dict)
            ]
        for block in blocks:
            for key in ("call_count", "total_time", "total_cputime"):
                value = block.get(key)
                if isinstance(value, int | float):
                    highest = max(highest, float(value))
            minutes = block.get("estimated_time_to_regain_access")
            if isinstance(minutes, int | float):
                regain = max(regain, float(minutes) * 60)
    return highest, regain


class GraphClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        settings: FacebookSettings,
        *,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        max_attempts: int = 5,
        rng: random.Random | None = None,
    ) -> None:
        if not settings.page_token:
            raise FacebookError("FACEBOOK_PAGE_TOKEN is not set")
        self.http = http
        self.settings = settings
        self.sleep = sleep
        self.max_attempts = max_attempts
        self.rng = rng or random.Random()
        self.requests = 0

    def _url(self, path: str) -> str:
        return f"{self.settings.graph_url}/v{self.settings.api_version}/{path.lstrip('/')}"

    async def iter_feed(self, page_id: str, page_size: int = 25) -> AsyncIterator[dict[str, Any]]:
        url: str | None = self._url(f"{page_id}/feed")
        params: dict[str, Any] | None = {
            "fields": FEED_FIELDS,
            "limit": page_size,
            "access_token": self.settings.page_token,
        }
        while url:
            data = await self._get(url, params)
            for post in data.get("data") or []:
                if isinstance(post, dict):
                    yield post
            next_url = (data.get("paging") or {}).get("next")
            url, params = (next_url, None) if isinstance(next_url, str) else (None, None)

    async def get_post(self, post_id: str) -> dict[str, Any]:
        return await self._get(
            self._url(post_id),
            {
                "fields": FEED_FIELDS.replace(",attachments{media,subattachments}", ""),
                "access_token": self.settings.page_token,
            },
        )

    async def _get(self, url: str, params: dict[str, Any] | None) -> dict[str, Any]:
        for attempt in range(self.max_attempts):
            self.requests += 1
            try:
                response = await self.http.get(url, params=params)
            except (httpx.TimeoutException, httpx.TransportError):
                await self._backoff(attempt)
                continue
            usage, regain = _usage_percent(response.headers)
            if response.status_code >= 500:
                await self._backoff(attempt)
                continue
            body = self._json(response)
            error = body.get("error") if isinstance(body, dict) else None
            if isinstance(error, dict):
                code = error.get("code")
                message = str(error.get("message") or "Graph API error")
                if code == 190:
                    raise FacebookTokenExpired(
                        "The Facebook Page token has expired or was revoked; generate a new "
                        f"Page access token and set FACEBOOK_PAGE_TOKEN. ({message})",
                        code,
                    )
                if code in RATE_LIMIT_CODES:
                    wait = regain or min(MAX_WAIT_SECONDS, 60.0 * 2**attempt)
                    await self.sleep(min(wait, MAX_WAIT_SECONDS))
                    continue
                raise FacebookError(message, code if isinstance(code, int) else None)
            if usage >= SLOW_DOWN_AT:  # pause before the allowance runs out, not after
                await self.sleep(min(MAX_WAIT_SECONDS, regain or (usage - SLOW_DOWN_AT) * 2))
            return body if isinstance(body, dict) else {}
        raise FacebookUnavailable("The Graph API kept failing; try the import again later.")

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            return {"error": {"message": f"non-JSON answer ({response.status_code})"}}

    async def _backoff(self, attempt: int) -> None:
        await self.sleep(self.rng.uniform(0, min(60.0, 1.0 * 2**attempt)))
