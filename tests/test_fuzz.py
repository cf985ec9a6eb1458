"""Fuzzing: property tests for the cursor codec and the mutation validator (hypothesis), and
schemathesis against /openapi.json with a valid token: no input makes the server answer 5xx,
and every error uses the envelope."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import hypothesis.strategies as st
import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from protocol.cursor import CursorCodec, ForeignCursor, LogCursor, SnapshotCursor
from storage.orders import PurchaseRequest, validate_purchase
from sync_server.errors import MalformedCursor, MutationRejected
from tests.support.api import Api

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


@given(states, st.text(min_size=1, max_size=40))
def test_cursors_round_trip_and_are_bound_to_their_user(state: Any, user: str) -> None:
    token = CODEC.encode(state, user)
    assert CODEC.decode(token, user) == state
    assert CODEC.decode(token, user) == state  # remembered once verified...
    with pytest.raises(ForeignCursor):
        CODEC.decode(token, user + "x")  # ...for that user only


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
        with contextlib.suppress(MalformedCursor, ForeignCursor):
            CODEC.decode(candidate, "u1")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
purchase_like = st.fixed_dictionaries(
    {
        "order_id": json_values | st.text(min_size=8, max_size=70),
        "items": st.lists(
            st.fixed_dictionaries(
                {
                    "item_id": json_values | st.text(max_size=70),
                    "listing_id": json_values,
                    "quantity": json_values | st.integers(),
                }
            ),
            max_size=4,
        )
        | json_values,
        "payment_method": json_values | st.sampled_from(["cod", "juice", "card", "cash"]),
    },
    optional={"note": json_values},
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(purchase_like, json_values))
def test_the_purchase_validator_accepts_or_rejects_cleanly(args: Any) -> None:
    try:
        request = msgspec.convert(args, PurchaseRequest)
    except msgspec.ValidationError:
        return
    try:
        validate_purchase(request)
    except MutationRejected as rejection:
        assert rejection.error_code == "invalid_args"


def test_no_input_makes_the_api_fail(server: str, buyer: Api) -> None:
    """Every operation in /openapi.json, with bodies and parameters hypothesis generates from
    it and a valid token: never a 5xx, and every JSON 4xx in the error envelope."""
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 30

    for operation in operations:

        @settings(
            max_examples=DEEP or 15,
            derandomize=not DEEP,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(operation.as_strategy())
        def check(case: Any) -> None:
            response = case.call(base_url=server, headers=buyer.headers)
            case.validate_response(response, checks=[not_a_server_error])
            content_type = response.headers.get("content-type") or [""]
            if isinstance(content_type, list):
                content_type = content_type[0]
            if 400 <= response.status_code < 500 and content_type.startswith("application/json"):
                body = response.json()
                assert isinstance(body.get("error", {}).get("code"), str), body
                assert isinstance(body["error"].get("message"), str), body

        check()
