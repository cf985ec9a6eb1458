"""Fuzzing: property tests for the cursor codec and the purchase arguments (hypothesis), and
schemathesis against /openapi.json as a buyer and as an admin: no input makes the server
answer 5xx, and every error uses the envelope."""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import re
import secrets
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis.strategies as st
import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from schemathesis.checks import not_a_server_error

from protocol.cursor import CursorCodec, CursorState, ForeignCursor, LogCursor, SnapshotCursor
from protocol.errors import MalformedCursor
from protocol.mutations import InvalidArgs, PurchaseRequest, parse
from sync_server.app import create_app
from sync_server.cli import ensure_admin
from tests.conftest import ADMIN_PASSWORD, Backend, fresh_backend
from tests.support.api import Api, login
from tests.support.live_server import serve_in_thread

CODEC = CursorCodec(b"fuzz-secret")
# CI runs a fixed, derandomised set of examples (a red build must mean a regression);
# FUZZ_EXAMPLES=500 make test explores with fresh random inputs.
DEEP = int(os.environ.get("FUZZ_EXAMPLES", "0"))
states = st.one_of(
    st.builds(LogCursor, st.integers(min_value=0, max_value=2**62)),
    st.builds(
        SnapshotCursor,
        st.integers(min_value=0, max_value=2**62),
        st.integers(min_value=0, max_value=20),
        st.text(max_size=64),
    ),
)


class CountingCodec(CursorCodec):
    """Counts full verifications (base64, varints, HMAC), to see which decodes were cached."""

    verifications = 0

    def _verify(self, token: str, user_id: str) -> CursorState:
        self.verifications += 1
        return super()._verify(token, user_id)


@given(states, st.text(min_size=1, max_size=40))
def test_cursors_round_trip_and_are_bound_to_their_user(state: Any, user: str) -> None:
    codec = CountingCodec(b"fuzz-secret")
    token = codec.encode(state, user)
    assert codec.decode(token, user) == state
    assert codec.decode(token, user) == state
    assert codec.verifications == 1  # the second decode was remembered, not verified again...
    with pytest.raises(ForeignCursor):
        codec.decode(token, user + "x")  # ...for that user only:
    assert codec.verifications == 2  # another user's decode is never answered from it


def cursor_bytes(token: str) -> bytes | None:
    """What a token says once base64 is undone (None: not base64 at all)."""
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None


@given(states, st.data())
def test_a_damaged_cursor_is_refused_never_crashes(state: Any, data: st.DataObject) -> None:
    token = CODEC.encode(state, "u1")
    position = data.draw(st.integers(min_value=0, max_value=len(token) - 1))
    replacement = data.draw(st.sampled_from("ABCxyz019-_!.="))
    damaged = token[:position] + replacement + token[position + 1 :]
    truncated = token[: data.draw(st.integers(min_value=0, max_value=len(token)))]
    for candidate in (damaged, truncated):
        if candidate == token:
            continue
        try:
            decoded = CODEC.decode(candidate, "u1")
        except (MalformedCursor, ForeignCursor):
            continue  # refused: 400 malformed_cursor, or a reset snapshot
        # Accepted: only another spelling of the very same bytes may be (base64 ignores the
        # spare low bits of the last character), and it must say exactly what the token says.
        assert cursor_bytes(candidate) == cursor_bytes(token), (token, candidate, decoded)
        assert decoded == state


def test_a_damaged_cursor_gets_400_or_a_reset_over_http(buyer: Api) -> None:
    cursor, _ = buyer.pull_all()
    candidates = {cursor[:n] for n in range(1, len(cursor))} | {
        cursor[:i] + c + cursor[i + 1 :] for i in range(len(cursor)) for c in "A_!"
    }
    candidates.discard(cursor)
    answers: dict[str, int] = defaultdict(int)
    for candidate in sorted(candidates):
        response = buyer.get("/api/sync/pull", params={"cursor": candidate, "limit": 1})
        if cursor_bytes(candidate) == cursor_bytes(cursor):  # the same cursor, spelt otherwise
            assert response.status_code == 200 and response.json()["reset"] is False, candidate
            answers["same cursor"] += 1
        elif response.status_code == 400:
            assert response.json()["error"]["code"] == "malformed_cursor", response.text
            answers["400"] += 1
        else:
            assert response.status_code == 200, (candidate, response.text)
            assert response.json()["reset"] is True, (candidate, response.text)
            answers["reset"] += 1
    # Both refusals were met: a cut or garbled cursor (400) and a well-formed, forged one.
    assert answers["400"] and answers["reset"], dict(answers)


CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")  # the documented shape, matched in full
PAYMENT_METHODS = ("juice", "myt_money", "card", "cod")


def is_client_id(value: Any) -> bool:
    return isinstance(value, str) and CLIENT_ID.fullmatch(value) is not None


def broken_rule(raw: Any) -> str | None:
    """The first rule of a purchase request's arguments that `raw` breaks, or None: the
    contract (protocol/mutations.py, README), written out independently of its types."""
    if not isinstance(raw, dict):
        return "not an object"
    required = {"order_id", "items", "payment_method"}
    if not required <= raw.keys() <= required | {"note"}:
        return "missing or unknown fields"
    if not is_client_id(raw["order_id"]):
        return "order_id"
    items = raw["items"]
    if not isinstance(items, list) or not 1 <= len(items) <= 50:
        return "items: 1 to 50"
    for item in items:
        if not isinstance(item, dict) or item.keys() != {"item_id", "listing_id", "quantity"}:
            return "items[]: fields"
        if not is_client_id(item["item_id"]):
            return "items[].item_id"
        listing_id = item["listing_id"]
        if not isinstance(listing_id, str) or not 1 <= len(listing_id) <= 64:
            return "items[].listing_id"
        quantity = item["quantity"]
        if type(quantity) is not int or not 1 <= quantity <= 100_000:  # no bool, no 2.0
            return "items[].quantity"
    if len({item["item_id"] for item in items}) != len(items):
        return "items[].item_id unique"
    if not isinstance(raw["payment_method"], str) or raw["payment_method"] not in PAYMENT_METHODS:
        return "payment_method"
    note = raw.get("note")
    if note is not None and (not isinstance(note, str) or len(note) > 1000):
        return "note"
    return None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


def mostly(valid: st.SearchStrategy[Any], *others: st.SearchStrategy[Any]) -> Any:
    """`valid` three times in four, else one of `others`: most examples then reach the rules
    themselves instead of stopping at the first wrong type."""
    return st.sampled_from([True, True, True, False]).flatmap(
        lambda good: valid if good else st.one_of(*others)
    )


good_ids = st.from_regex(CLIENT_ID, fullmatch=True)
client_ids = mostly(
    good_ids,
    st.from_regex(r"[A-Za-z0-9_-]{5,67}", fullmatch=True),
    st.sampled_from(["item-0001", "item-0002"]),  # duplicates within one order
    good_ids.map(lambda value: value + "\n"),
    st.text(max_size=70),
    json_values,
)
quantities = mostly(
    st.integers(min_value=1, max_value=100_000),
    st.sampled_from([0, -1, 100_000, 100_001, 2**63]),
    st.sampled_from([True, 2.0, 2.5, "2"]),
    json_values,
)
purchase_items = st.fixed_dictionaries(
    {
        "item_id": client_ids,
        "listing_id": mostly(st.text(min_size=1, max_size=64), st.text(max_size=70), json_values),
        "quantity": quantities,
    }
)
purchase_like = st.fixed_dictionaries(
    {
        "order_id": client_ids,
        "items": mostly(
            st.lists(purchase_items, min_size=1, max_size=3),
            st.lists(purchase_items.map(lambda item: {**item, "price": 1}), max_size=2),
            json_values,
        ),
        "payment_method": mostly(
            st.sampled_from(PAYMENT_METHODS), st.sampled_from(["cash", "COD", ""]), json_values
        ),
    },
    optional={"note": st.none() | st.text(max_size=30) | st.text(min_size=998, max_size=1002)},
)
purchases = mostly(
    purchase_like,
    purchase_like.map(lambda raw: {**raw, "total": 100}),  # a field the contract does not have
    json_values,
)
VALID = {
    "order_id": "order-0001",
    "items": [{"item_id": "item-0001", "listing_id": "L1", "quantity": 1}],
    "payment_method": "cod",
}


def many_items(count: int) -> list[dict[str, Any]]:
    return [{"item_id": f"item-{n:04}", "listing_id": "L1", "quantity": 1} for n in range(count)]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(purchases)
@example(VALID)
@example({**VALID, "order_id": "order-0001\n"})  # "$" also matches before a final newline
@example({**VALID, "order_id": "o" * 7})
@example({**VALID, "order_id": "o" * 64})
@example({**VALID, "order_id": "o" * 65})
@example({**VALID, "items": []})
@example({**VALID, "items": many_items(50)})
@example({**VALID, "items": many_items(51)})
@example({**VALID, "items": many_items(1) * 2})
@example({**VALID, "items": [{**many_items(1)[0], "quantity": 100_000}]})
@example({**VALID, "items": [{**many_items(1)[0], "quantity": 100_001}]})
@example({**VALID, "items": [{**many_items(1)[0], "quantity": 2.5}]})
@example({**VALID, "items": [{**many_items(1)[0], "quantity": "2"}]})
@example({**VALID, "items": [{**many_items(1)[0], "quantity": True}]})
@example({**VALID, "payment_method": "cash"})
@example({**VALID, "note": "n" * 1000})
@example({**VALID, "note": "n" * 1001})
def test_the_purchase_validator_decides_by_the_rules(raw: Any) -> None:
    """Every input is checked: refused (InvalidArgs, nothing else) exactly when it breaks a
    rule, and when accepted, taken as sent, nothing coerced or dropped."""
    rule = broken_rule(raw)
    try:
        request = parse(raw, PurchaseRequest)
    except InvalidArgs:
        assert rule is not None, f"refused, but it keeps every rule: {raw!r}"
        return
    assert rule is None, f"accepted, but it breaks {rule}: {raw!r}"
    assert msgspec.to_builtins(request) == {"note": None, **raw}


@pytest.fixture
def admin_playground(backend: Backend, tmp_path: Path) -> Iterator[tuple[str, Api]]:
    """A server of its own, on an empty database of its own, with an admin: fuzzing as an
    admin creates, edits and deletes whatever the schema lets it, and none of that may land in
    the session's shared database."""
    with fresh_backend(backend.name, tmp_path) as private:
        email = f"fuzz-admin-{secrets.token_hex(4)}@freshroots.test"
        asyncio.run(ensure_admin(private.settings(), email, ADMIN_PASSWORD, "Fuzz admin"))
        with serve_in_thread(create_app(private.settings())) as base_url:
            yield base_url, login(base_url, email, ADMIN_PASSWORD)


def fuzz_operation(operation: Any, server: str, api: Api) -> list[int]:
    """Hypothesis cases for one operation: never a 5xx, every JSON 4xx in the error envelope.
    Returns the statuses met."""
    statuses: list[int] = []

    @settings(
        max_examples=DEEP or 15,
        derandomize=not DEEP,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(operation.as_strategy())
    def check(case: Any) -> None:
        response = case.call(base_url=server, headers=api.headers)
        statuses.append(response.status_code)
        case.validate_response(response, checks=[not_a_server_error])
        content_type = response.headers.get("content-type") or [""]
        if isinstance(content_type, list):
            content_type = content_type[0]
        if 400 <= response.status_code < 500 and content_type.startswith("application/json"):
            body = response.json()
            assert isinstance(body.get("error", {}).get("code"), str), body
            assert isinstance(body["error"].get("message"), str), body

    check()
    return statuses


def fuzz_api(server: str, api: Api, skip: tuple[str, ...] = ()) -> dict[str, list[int]]:
    """Every operation in /openapi.json but `skip` ("METHOD /path"), with bodies and
    parameters hypothesis generates from it, signed in as `api`. Returns the statuses met,
    by operation."""
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 30
    statuses: dict[str, list[int]] = {}
    for operation in operations:
        label = f"{operation.method.upper()} {operation.path}"
        if label not in skip:
            statuses[label] = fuzz_operation(operation, server, api)
    return statuses


def admin_only(statuses: dict[str, list[int]]) -> list[str]:
    return [label for label in statuses if label.split(" ", 1)[1].startswith("/api/admin")]


def test_no_input_makes_the_api_fail_for_a_buyer(server: str, buyer: Api) -> None:
    statuses = fuzz_api(server, buyer)
    admin_routes = admin_only(statuses)
    assert admin_routes and all(set(statuses[label]) <= {401, 403} for label in admin_routes), (
        "a buyer got past an admin route's authorisation"
    )


def test_no_input_makes_the_api_fail_for_an_admin(
    admin_playground: tuple[str, Api],
) -> None:
    server, admin = admin_playground
    # Erasing one's own account would sign the admin out half way: the operations after it
    # would stop at 401 and their validation go untested. The buyer run covers it.
    statuses = fuzz_api(server, admin, skip=("DELETE /api/me",))
    admin_routes = admin_only(statuses)
    assert len(admin_routes) >= 10, sorted(statuses)
    stopped = [label for label in admin_routes if set(statuses[label]) <= {401, 403}]
    assert not stopped, f"admin routes never got past authorisation: {stopped}"
    assert admin.get("/api/me").status_code == 200  # still signed in at the end


# Past what an INTEGER (2^31) or BIGINT (2^63) column holds, negative, and not quite integers.
EDGE_NUMBERS = ("-1", "0", str(2**31), str(2**63), str(10**30), "1e3", "0x10")


def test_numbers_past_a_column_in_query_parameters_are_refused_not_a_crash(
    admin_playground: tuple[str, Api],
) -> None:
    """/openapi.json types every query parameter as a string, so schemathesis almost never
    sends a number, let alone one past what a column holds: send those on purpose, to every
    GET route (as an admin, who may call them all)."""
    server, admin = admin_playground
    document = admin.get("/openapi.json").json()
    crashes, probed = [], 0
    # A connection of its own for each request: the server closes one after a 500.
    with httpx.Client(base_url=server, headers={**admin.headers, "connection": "close"}) as http:
        for path, operations in sorted(document["paths"].items()):
            parameters = operations.get("get", {}).get("parameters", [])
            for name in [p["name"] for p in parameters if p["in"] == "query"]:
                for value in EDGE_NUMBERS:
                    response = http.get(re.sub(r"\{[^}]+\}", "x", path), params={name: value})
                    probed += 1
                    if response.status_code >= 500:
                        crashes.append(f"GET {path}?{name}={value} -> {response.status_code}")
                    elif response.status_code >= 400:
                        assert isinstance(response.json()["error"]["code"], str), response.text
    assert probed > 50
    assert not crashes, "\n".join(crashes)
