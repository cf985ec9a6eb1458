"""`GET /openapi.json`, generated from the routes and their `@doc` metadata.

Request bodies are described from the same msgspec types the handlers validate with, so the
document cannot drift from what the server accepts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec
from starlette.routing import BaseRoute, Route

from sync_server.http import Doc

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}


def build_openapi(routes: Sequence[BaseRoute], version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    bodies: list[Any] = []
    for route in routes:
        if not isinstance(route, Route):
            continue
        meta: Doc | None = getattr(route.endpoint, "openapi_doc", None)
        if meta is None:
            continue
        if meta.body is not None:
            bodies.append(meta.body)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            paths.setdefault(route.path, {})[method.lower()] = _operation(route, meta)
    schemas: dict[str, Any] = {"Error": ERROR_SCHEMA}
    if bodies:
        _, components = msgspec.json.schema_components(
            bodies, ref_template="#/components/schemas/{name}"
        )
        schemas.update(components)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Fresh Roots sync API", "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


def _operation(route: Route, meta: Doc) -> dict[str, Any]:
    error = {
        "description": "Error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    success: dict[str, Any] = {"description": "OK"}
    if meta.status != 204:
        success["content"] = {"application/json": {"schema": {"type": "object"}}}
    operation: dict[str, Any] = {
        "summary": meta.summary,
        "tags": [meta.tag],
        "operationId": f"{route.name}_{re.sub(r'[^a-z0-9]+', '_', route.path.lower())}".strip("_"),
        "responses": {str(meta.status): success, "4XX": error, "5XX": error},
    }
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", route.path)
    ]
    parameters += [
        {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
        for name in meta.query
    ]
    if parameters:
        operation["parameters"] = parameters
    if meta.auth:
        operation["security"] = [{"bearer": []}]
    if meta.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": f"#/components/schemas/{meta.body.__name__}"}
                }
            },
        }
    return operation
