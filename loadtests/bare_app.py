"""A bare Starlette JSON endpoint: the yardstick the sync benchmarks are a ratio to."""

from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def bare(request: Request) -> JSONResponse:
    return JSONResponse({"cursor": "AQEAtG9v3H2Qk1c", "more": False, "reset": False, "changes": {}})


app = Starlette(routes=[Route("/bare", bare)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
