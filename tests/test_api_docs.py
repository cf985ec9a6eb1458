"""The API reference: /openapi.json is complete and true, and /docs renders it in Chromium
with nothing fetched from outside the server and nothing refused by its CSP.

Complete: every route of the app is an operation, each with a summary, its auth, its request
body's schema, a schema for its answer and the shared error envelope (every code of the error
tree). True: the declared auth is what the server enforces, and real answers of a running
server validate against the documented schemas."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
from starlette.routing import Route

from protocol.errors import FreshRootsError, MutationRejected
from sync_server.openapi import API_DOCS
from sync_server.routes import sync
from tests import test_dashboard
from tests.support.api import Api, client_id, purchase, purchase_args
from tests.support.live_server import RUNNING

browser = test_dashboard.browser  # Debian's Chromium through Playwright, as the dashboard's
ARTIFACTS = Path(__file__).parent / "artifacts"
PULL_SUMMARY = sync.pull.openapi_doc.summary  # type: ignore[attr-defined]
# Operations that take no body although their method could carry one.
BODYLESS = {
    "post /api/auth/verify-email/request",
    "post /admin/session/refresh",
    "post /admin/session/logout",
}
# Not operations: the document itself, the pages, their redirects.
NOT_OPERATIONS = {"/openapi.json", "/docs", "/admin"}
WATCH = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI + ' ' + (e.sample || '')));
"""


@pytest.fixture(scope="module")
def document(server: str) -> dict[str, Any]:
    response = httpx.get(f"{server}/openapi.json")
    assert response.status_code == 200
    return dict(response.json())


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, methods in sorted(document["paths"].items())
        for method, operation in sorted(methods.items())
    ]


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        *_, section, name = node["$ref"].split("/")
        node = document["components"][section][name]
    return node


# -- complete --------------------------------------------------------------------------------


def test_every_route_of_the_app_is_an_operation(server: str, document: dict[str, Any]) -> None:
    app = RUNNING[server][0]
    routes = {
        f"{method.lower()} {route.path}"
        for route in app.routes
        if isinstance(route, Route) and route.path not in NOT_OPERATIONS
        for method in (route.methods or set()) - {"HEAD"}
    }
    documented = {f"{method} {path}" for method, path, _ in operations(document)}
    assert routes - documented == set(), "routes missing from /openapi.json"
    assert documented - routes == set(), "operations the server does not have"
    assert len(documented) > 40


def test_every_operation_has_a_summary_auth_bodies_and_answers(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z]+[A-Za-z0-9]*", id_) for id_ in ids)  # deep-linkable
    for method, path, operation in operations(document):
        label = f"{method} {path}"
        assert operation["summary"].strip(), label
        assert operation["tags"] and operation["description"].strip(), label
        assert "**Auth**" in operation["description"], label
        for requirement in operation.get("security", []):
            assert set(requirement) <= set(schemes), label
        # A body: its schema, resolvable.
        if method in ("post", "put", "patch") and label not in BODYLESS:
            body = operation.get("requestBody")
            assert body and body["required"], f"{label} takes a body: no requestBody"
            for content in body["content"].values():
                resolve(document, content["schema"])  # raises on a dangling reference
        elif label in BODYLESS:
            assert "requestBody" not in operation, label
        # Answers: one success, with a schema unless it has no body; errors in the envelope.
        responses = operation["responses"]
        successes = [status for status in responses if status.startswith("2")]
        assert successes, f"{label}: no success answer"
        for status in successes:
            answer = resolve(document, responses[status])
            if status == "204" or answer["description"].endswith("no body"):
                assert "content" not in answer, label
                continue
            if status == "206":  # a byte range of the 200's representation
                continue
            assert answer["content"], f"{label} {status}: no content"
            for media_type, content in answer["content"].items():
                schema = resolve(document, content["schema"])
                assert schema.get("type") or schema.get("anyOf"), f"{label} {status}"
                if media_type == "application/json" and schema.get("type") == "object":
                    assert "properties" in schema or schema.get("additionalProperties") is not None
        errors = {status: resolve(document, answer) for status, answer in responses.items()}
        errors = {status: answer for status, answer in errors.items() if status[0] in "45"}
        assert {"4XX", "5XX"} <= set(errors), label
        for status, answer in errors.items():
            if label == "get /readyz" and status == "503":
                continue  # not ready: the readiness body, by design
            if "content" not in answer:  # the snapshot's 416
                assert answer["description"].endswith("no body"), (label, status)
                continue
            schema = answer["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorEnvelope"}, (label, status)
        if operation.get("security") and {"bearer": []} in operation["security"]:
            assert "401" in errors, label
    assert "ErrorEnvelope" in schemas


def test_auth_is_declared_per_route(document: dict[str, Any]) -> None:
    paths = document["paths"]

    def security(method: str, path: str) -> Any:
        return paths[path][method].get("security")

    for public in (
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/api/sync/snapshot"),
        ("post", "/api/auth/login"),
        ("post", "/api/auth/register"),
        ("post", "/api/auth/refresh"),
        ("post", "/api/webhooks/payments/mips"),
    ):
        assert security(*public) is None, public
    for user in (
        ("get", "/api/sync/pull"),
        ("post", "/api/sync/push"),
        ("get", "/api/sync/watermelon"),
        ("post", "/api/sync/watermelon"),
        ("get", "/api/me"),
        ("post", "/api/orders/purchase-request"),
        ("post", "/api/admin/listings"),
    ):
        assert security(*user) == [{"bearer": []}], user
    assert security("get", "/api/listings") == [{}, {"bearer": []}]  # optional: drafts for admins
    assert "dashboardSession" in security("post", "/admin/session/refresh")[0]
    admin = [operation for _, path, operation in operations(document) if "/admin/" in path]
    assert len(admin) > 10
    for operation in admin:
        if operation.get("security") == [{"bearer": []}]:
            assert "role `admin`" in operation["description"], operation["summary"]


def test_the_sync_routes_of_v1_1_and_watermelondb_are_described(document: dict[str, Any]) -> None:
    paths = document["paths"]
    schemas = document["components"]["schemas"]
    snapshot = paths["/api/sync/snapshot"]["get"]
    assert set(snapshot["responses"]) >= {"200", "206", "304"}
    assert {p["name"] for p in snapshot["parameters"]} == {"If-None-Match"}
    assert "`Range: bytes=N-`" in snapshot["description"] and "If-Range" in snapshot["description"]
    assert "position" in schemas["CatalogueSnapshot"]["required"]
    pull = paths["/api/sync/pull"]["get"]
    assert pull["summary"] == PULL_SUMMARY
    query = {p["name"]: p for p in pull["parameters"] if p["in"] == "query"}
    assert set(query) == {"cursor", "limit", "snapshot"}
    assert all(p["description"] for p in query.values())
    assert all(p["schema"] == {"type": "string"} for p in query.values())  # see test_fuzz.py
    page = resolve(document, pull["responses"]["200"]["content"]["application/json"]["schema"])
    assert set(page["required"]) == {"cursor", "more", "reset", "changes"}
    watermelon = paths["/api/sync/watermelon"]
    assert set(watermelon) == {"get", "post"}
    body = watermelon["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert resolve(document, body)["additionalProperties"] is False  # unknown tables: 400
    assert {p["name"] for p in watermelon["get"]["parameters"]} >= {"last_pulled_at"}


def test_the_error_envelope_lists_every_code_of_the_error_tree(document: dict[str, Any]) -> None:
    def tree(kind: type[FreshRootsError]) -> list[type[FreshRootsError]]:
        return [kind, *(sub for child in kind.__subclasses__() for sub in tree(child))]

    codes = {
        kind.code: kind.status_code
        for kind in tree(FreshRootsError)
        if kind is not MutationRejected
    }
    assert {"validation_failed", "rate_limited", "service_unavailable", "not_found"} <= set(codes)
    envelope = document["components"]["schemas"]["ErrorEnvelope"]
    code = envelope["properties"]["error"]["properties"]["code"]
    assert set(codes) <= set(code["examples"])
    for name, status in codes.items():
        assert f"| `{name}` | {status} |" in envelope["description"], name
    # Each shared error answer names the codes of its status.
    responses = document["components"]["responses"]
    assert "`rate_limited`" in responses["RateLimited"]["description"]
    assert "Retry-After" in responses["RateLimited"]["headers"]
    assert "`invalid_token`" in responses["Unauthorized"]["description"]


# -- true ------------------------------------------------------------------------------------


def test_the_declared_auth_is_what_the_server_enforces(
    server: str, document: dict[str, Any]
) -> None:
    """Every operation called with no credentials (and an empty body): those declared as
    needing a bearer answer 401 before anything else, the dashboard's 401 or 403 (its CSRF
    check), and the public ones never 401."""
    with httpx.Client(base_url=server, timeout=30) as http:
        for method, path, operation in operations(document):
            url = re.sub(r"\{[^}]+\}", "not-an-id", path)
            body = {"json": {}} if "requestBody" in operation else {}
            status = http.request(method.upper(), url, **body).status_code
            security = operation.get("security")
            label = f"{method} {path} -> {status}"
            if security == [{"bearer": []}]:
                assert status == 401, label
            elif security and "dashboardSession" in security[0]:
                assert status in (401, 403), label
            else:
                assert status != 401 and status < 500, label


def validate(document: dict[str, Any], method: str, path: str, response: httpx.Response) -> None:
    """`response` is one of the answers documented for the operation, in its schema."""
    answers = document["paths"][path][method]["responses"]
    status = str(response.status_code)
    answer = resolve(document, answers.get(status) or answers[f"{status[0]}XX"])
    content = answer.get("content")
    if not content:
        assert not response.content, (method, path, status)
        return
    media_type = response.headers["content-type"].split(";")[0]
    assert media_type in content, (method, path, status, media_type)
    if media_type != "application/json":
        return
    schema = {"components": document["components"], **content[media_type]["schema"]}
    problems = [
        f"{error.instance_path}: {error.message}"
        for error in jsonschema_rs.Draft202012Validator(schema).iter_errors(response.json())
    ]
    assert not problems, (method, path, status, problems[:5])


def test_real_answers_match_the_documented_schemas(
    server: str, document: dict[str, Any], admin: Api, buyer: Api
) -> None:
    def check(api: Api, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = path.format(**kwargs.pop("ids", {}))
        response = api.request(method.upper(), url, **kwargs)
        validate(document, method, path, response)
        return response

    listing = admin.create_listing(images=["farm/tomatoes"])
    check(admin, "post", "/api/admin/listings", json={"title": "T", "price": 1, "unit": "kg"})
    check(
        admin,
        "patch",
        "/api/admin/listings/{listing_id}",
        json={"stock": 8},
        ids={"listing_id": listing["id"]},
    )
    pushed = check(
        buyer,
        "post",
        "/api/sync/push",
        json={
            "client_id": client_id(),
            "mutations": [purchase(1, listing["id"]), purchase(2, "no-such-listing")],
        },
    )
    assert [r["ok"] for r in pushed.json()["results"]] == [True, False]
    order_id = pushed.json()["results"][0]["result"]["order_id"]
    for api in (buyer, admin):  # an admin's scope has admin_actions and drafts too
        page = check(api, "get", "/api/sync/pull", params={"limit": 500})
        assert page.json()["changes"]
    snapshot = check(Api(server), "get", "/api/sync/snapshot")
    position = snapshot.json()["position"]
    check(buyer, "get", "/api/sync/pull", params={"snapshot": position})
    check(buyer, "get", "/api/sync/pull", params={"cursor": "%%%"})  # 400 malformed_cursor
    check(buyer, "get", "/api/sync/watermelon")
    rejected = check(
        buyer,
        "post",
        "/api/sync/watermelon",
        params={"last_pulled_at": 1},
        json={"listings": {"created": [{"id": "mine-now"}]}},
    )
    assert rejected.json() == {"experimentalRejectedIds": {"listings": ["mine-now"]}}
    check(buyer, "post", "/api/sync/watermelon", json={"carts": {}})  # 400 unknown table
    check(Api(server), "get", "/api/listings", params={"limit": 2})
    check(buyer, "get", "/api/listings/{listing_id}", ids={"listing_id": listing["id"]})
    check(buyer, "post", "/api/orders/purchase-request", json=purchase_args(listing["id"]))
    check(buyer, "get", "/api/orders")
    check(buyer, "get", "/api/orders/{order_id}", ids={"order_id": order_id})
    check(
        buyer,
        "post",
        "/api/listings/{listing_id}/interest",
        json={"message": "Saturday?"},
        ids={"listing_id": listing["id"]},
    )
    check(buyer, "get", "/api/notifications")
    check(buyer, "get", "/api/me")
    check(buyer, "get", "/api/me/export")
    check(buyer, "post", "/api/auth/verify-email/request")
    check(buyer, "post", "/api/auth/verify-email/confirm", json={"code": "000000"})  # 400
    check(buyer, "post", "/api/auth/refresh", json={"refresh_token": buyer.refresh_token})
    check(admin, "get", "/api/admin/orders", params={"status": "pending"})
    check(admin, "get", "/api/admin/live/cursor")
    for step in ("approve", "mark-paid", "complete"):
        check(
            admin,
            "put",
            f"/api/admin/orders/{{order_id}}/{step}",
            json={},
            ids={"order_id": order_id},
        )
    check(
        admin, "put", "/api/admin/orders/{order_id}/approve", json={}, ids={"order_id": order_id}
    )  # 409: completed already
    check(admin, "get", "/api/admin/audit", params={"limit": 3})
    check(admin, "get", "/api/admin/analytics")
    check(buyer, "get", "/api/admin/analytics")  # 403
    check(Api(server), "get", "/api/me")  # 401
    check(admin, "post", "/api/admin/listings", json={"title": "T", "price": -1, "unit": "kg"})
    check(Api(server), "get", "/healthz")
    check(Api(server), "get", "/readyz")
    check(Api(server), "get", "/metrics")


# -- /docs -------------------------------------------------------------------------------------


def test_the_vendored_files_are_the_ones_recorded(server: str) -> None:
    """What README.md records (size, sha256) is what is served, and the page is local."""
    readme = (API_DOCS / "README.md").read_text()
    recorded = re.findall(r"\| `([\w.-]+)` \| ([\d,]+) \| `([0-9a-f]{64})` \|", readme)
    assert {name for name, _, _ in recorded} >= {"swagger-ui-bundle.js", "swagger-ui.css"}
    for name, size, digest in recorded:
        served = httpx.get(f"{server}/docs/{name}")
        assert served.status_code == 200, name
        assert len(served.content) == int(size.replace(",", "")), name
        assert hashlib.sha256(served.content).hexdigest() == digest, name
    # Compressed once, answered from memory, revalidated by ETag.
    bundle = httpx.get(f"{server}/docs/swagger-ui-bundle.js", headers={"accept-encoding": "br"})
    assert bundle.headers["content-encoding"] == "br"
    assert bundle.num_bytes_downloaded < 500_000 < len(bundle.content)
    again = httpx.get(
        f"{server}/docs/swagger-ui-bundle.js",
        headers={"accept-encoding": "br", "if-none-match": bundle.headers["etag"]},
    )
    assert again.status_code == 304 and not again.content
    assert httpx.get(f"{server}/docs/nothing-here.js").json()["error"]["code"] == "not_found"
    page = httpx.get(f"{server}/docs", follow_redirects=True)
    assert page.status_code == 200 and str(page.url).endswith("/docs/")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "default-src 'none'" in policy
    assert "unsafe" not in policy
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text), "a remote asset"


def test_docs_page_renders_the_pull_route_offline_under_its_csp(server: str, browser: Any) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    left: list[str] = []
    origin = server.rstrip("/")

    def only_this_server(route: Any) -> None:
        if route.request.url.startswith((origin + "/", "data:")):
            route.continue_()
        else:
            left.append(route.request.url)
            route.abort()

    context.route("**/*", only_this_server)
    context.add_init_script(WATCH)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(f"{server}/docs")

    pull = page.locator("#operations-sync-getApiSyncPull")
    pull.locator(".opblock-summary-description", has_text=PULL_SUMMARY).wait_for(timeout=20_000)
    assert pull.locator(".opblock-summary-description").inner_text() == PULL_SUMMARY
    pull.locator(".opblock-summary-control").click()
    page.wait_for_selector("tr[data-param-name='snapshot']", timeout=10_000)
    page.screenshot(path=str(ARTIFACTS / "api-docs.png"), full_page=False)

    # "Try it out" reaches the server itself (connect-src 'self').
    health = page.locator("#operations-health-getHealthz")
    health.locator(".opblock-summary-control").click()
    health.locator("button.try-out__btn").click()
    health.locator("button.execute").click()
    health.locator(".live-responses-table .response-col_status", has_text="200").wait_for(
        timeout=10_000
    )

    violations = page.evaluate("window.__csp")

    # A deep link (in a page of its own) opens its operation.
    linked = context.new_page()
    linked.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    linked.goto(f"{server}/docs/#/sync/postApiSyncWatermelon")
    watermelon = linked.locator("#operations-sync-postApiSyncWatermelon")
    watermelon.locator(".opblock-body").wait_for(timeout=20_000)
    assert "experimentalRejectedIds" in watermelon.inner_text()
    violations += linked.evaluate("window.__csp")

    assert violations == [], "CSP violations"
    assert problems == [], "console errors"
    assert left == [], "requests that left the server"
    context.close()
