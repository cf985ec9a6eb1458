"""A stand-in Graph API for a Page feed: token checks (code 190), paging with absolute
`paging.next` URLs (an empty page that still has `next` included), usage headers, and
switchable rate-limit (code 4 / 80001) and 5xx answers, and post pictures as its CDN serves
them. Records every request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass
class GraphState:
    posts: list[dict[str, Any]]
    token: str
    page_size: int = 2
    usage_percent: int = 10
    rate_limit_next: int = 0
    rate_limit_code: int = 4
    regain_minutes: int = 2
    fail_next: int = 0
    requests: list[str] = field(default_factory=list)
    # Post pictures, served at /cdn/{name} as Facebook's CDN serves `full_picture` URLs.
    pictures: dict[str, bytes] = field(default_factory=dict)


def _error(message: str, code: int, status: int, kind: str = "OAuthException") -> JSONResponse:
    return JSONResponse(
        {
            "error": {
                "message": message,
                "type": kind,
                "code": code,
                "error_subcode": 460 if code == 190 else None,
                "fbtrace_id": "AbCdEf123",
            }
        },
        status,
    )


def create_graph_standin(state: GraphState) -> Starlette:
    def usage_headers() -> dict[str, str]:
        usage = state.usage_percent
        return {
            "x-app-usage": orjson.dumps(
                {"call_count": usage, "total_time": usage // 2, "total_cputime": usage // 2}
            ).decode(),
            "x-business-use-case-usage": orjson.dumps(
                {
                    "104857600012345": [
                        {
                            "type": "pages",
                            "call_count": usage,
                            "total_time": 1,
                            "total_cputime": 1,
                            "estimated_time_to_regain_access": 0,
                        }
                    ]
                }
            ).decode(),
        }

    def gate(request: Request) -> JSONResponse | None:
        state.requests.append(str(request.url))
        if state.fail_next > 0:
            state.fail_next -= 1
            return JSONResponse(
                {
                    "error": {
                        "message": "An unknown error occurred",
                        "code": 1,
                        "type": "OAuthException",
                    }
                },
                500,
            )
        if state.rate_limit_next > 0:
            state.rate_limit_next -= 1
            response = _error("(#4) Application request limit reached", state.rate_limit_code, 400)
            response.headers["x-business-use-case-usage"] = orjson.dumps(
                {
                    "104857600012345": [
                        {
                            "type": "pages",
                            "call_count": 100,
                            "total_time": 5,
                            "total_cputime": 5,
                            "estimated_time_to_regain_access": state.regain_minutes,
                        }
                    ]
                }
            ).decode()
            return response
        if request.query_params.get("access_token") != state.token:
            return _error("Error validating access token: Session has expired.", 190, 401)
        return None

    async def feed(request: Request) -> JSONResponse:
        refused = gate(request)
        if refused is not None:
            return refused
        offset = int(request.query_params.get("after") or 0)
        size = state.page_size
        # One deliberately empty page in the middle, still pointing onwards.
        empty = offset == size and len(state.posts) > size and "was_empty" not in request.url.query
        chunk = [] if empty else state.posts[offset : offset + size]
        next_offset = offset if empty else offset + size
        body: dict[str, Any] = {"data": chunk, "paging": {"cursors": {"before": "b", "after": "a"}}}
        if next_offset < len(state.posts):
            marker = "&was_empty=1" if empty else ""
            body["paging"]["next"] = (
                f"{request.url.scheme}://{request.url.netloc}{request.url.path}?"
                f"access_token={state.token}&limit={size}&after={next_offset}{marker}"
            )
        return JSONResponse(body, headers=usage_headers())

    async def post(request: Request) -> JSONResponse:
        refused = gate(request)
        if refused is not None:
            return refused
        for item in state.posts:
            if item["id"] == request.path_params["post_id"]:
                return JSONResponse(item, headers=usage_headers())
        return _error("Unsupported get request.", 100, 400, "GraphMethodException")

    async def picture(request: Request) -> Response:
        data = state.pictures.get(request.path_params["name"])
        if data is None:
            return Response("Not Found", 404)  # what an expired CDN URL answers
        return Response(data, media_type="image/png")

    return Starlette(
        routes=[
            Route("/cdn/{name}", picture),
            Route("/v{version}/{page_id}/feed", feed),
            Route("/v{version}/{post_id}", post),
        ]
    )
