"""Push: apply a device's queued mutations exactly once, in order, whatever the retries.

Per `client_id` we keep the last processed mutation id and every outcome, written in the
same transaction as the mutation's effects. The client row is locked (`FOR UPDATE`) for
the batch, so a duplicate batch arriving on another instance while the first is still
being applied waits, then finds the outcomes stored and returns them: at most once, ever,
including after a crash (an uncommitted batch left no outcome and no effect).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import orjson
from sqlalchemy import insert, select, update

from protocol.errors import Forbidden, MutationRejected, ValidationFailed
from protocol.mutations import (
    CancelOrder,
    ExpressInterest,
    InvalidArgs,
    MarkNotificationsRead,
    PurchaseRequest,
    RegisterDevice,
    parse,
)
from storage.activity import (
    express_interest,
    insert_interests,
    mark_notifications_read,
    register_device,
)
from storage.changelog import ChangeLog, Tx
from storage.db import insert_for, now_ms
from storage.models import MutationResult, SyncClient
from storage.orders import cancel_order, listings_named, lock_for_batch, place_purchase_request
from storage.scopes import Principal


class Mutation(msgspec.Struct, forbid_unknown_fields=True):
    id: int
    name: str
    args: dict[str, Any] = {}


Handler = Callable[[Tx, Principal, Any], Awaitable[dict[str, Any]]]
HANDLERS: dict[str, tuple[type[msgspec.Struct], Handler]] = {
    "purchase_request": (PurchaseRequest, place_purchase_request),
    "express_interest": (ExpressInterest, express_interest),
    "cancel_order": (CancelOrder, lambda tx, who, args: cancel_order(tx, who, args.order_id)),
    "mark_notifications_read": (MarkNotificationsRead, mark_notifications_read),
    "register_device": (RegisterDevice, register_device),
}


# Handlers that leave nothing behind when they refuse (they refuse before writing anything,
# or undo what they wrote): a savepoint (two round trips) would have nothing to undo.
NO_SAVEPOINT = frozenset({"express_interest", "purchase_request"})


def rejected(mutation_id: int, code: str, message: str) -> dict[str, Any]:
    return {"id": mutation_id, "ok": False, "error": {"code": code, "message": message}}


async def apply_mutation(tx: Tx, principal: Principal, mutation: Mutation) -> dict[str, Any]:
    """Apply one mutation inside a savepoint; a business rejection undoes only its own writes."""
    entry = HANDLERS.get(mutation.name)
    if entry is None:
        return rejected(mutation.id, "unknown_mutation", f"unknown mutation {mutation.name!r}")
    args_type, handler = entry
    try:
        args = parse(mutation.args, args_type)
    except InvalidArgs as error:
        return rejected(mutation.id, "invalid_args", str(error))
    checkpoint = tx.checkpoint()
    savepoint = None if mutation.name in NO_SAVEPOINT else await tx.conn.begin_nested()
    try:
        result = await handler(tx, principal, args)
    except MutationRejected as rejection:
        if savepoint is not None:
            await savepoint.rollback()
        tx.restore(checkpoint)
        return rejected(mutation.id, rejection.error_code, rejection.message)
    if savepoint is not None:
        await savepoint.commit()
    return {"id": mutation.id, "ok": True, "result": result}


async def _lock_client(tx: Tx, client_id: str, user_id: str) -> tuple[str, int]:
    """The client's row, created if new, locked for the batch: one upsert that returns it.

    A duplicate of a batch still being applied waits here for the original: on the new
    client's row the original has not committed yet, or on the row lock it holds. The
    no-op update is what takes the lock (as SELECT … FOR UPDATE would, one round trip
    fewer) and what returns the row as the original left it."""
    now = now_ms()
    statement = insert_for(tx.dialect)(SyncClient).values(
        client_id=client_id,
        user_id=user_id,
        last_mutation_id=0,
        created_at=now,
        updated_at=now,
    )
    statement = statement.on_conflict_do_update(
        index_elements=["client_id"],
        set_={"updated_at": SyncClient.__table__.c.updated_at},
    ).returning(SyncClient.user_id, SyncClient.last_mutation_id)
    async with tx.patient():
        row = (await tx.conn.execute(statement)).one()
    return row.user_id, int(row.last_mutation_id)


async def push(
    changelog: ChangeLog, principal: Principal, client_id: str, mutations: list[Mutation]
) -> list[dict[str, Any]]:
    async def work(tx: Tx) -> list[dict[str, Any]]:
        owner_id, last_id = await _lock_client(tx, client_id, principal.user_id)
        if owner_id != principal.user_id:
            raise Forbidden("This client_id belongs to another user.", code="client_id_taken")
        earlier_ids = [mutation.id for mutation in mutations if mutation.id <= last_id]
        stored: dict[int, dict[str, Any]] = {}
        if earlier_ids:
            rows = await tx.conn.execute(
                select(MutationResult.mutation_id, MutationResult.outcome).where(
                    MutationResult.client_id == client_id,
                    MutationResult.mutation_id.in_(earlier_ids),
                )
            )
            stored = {int(mutation_id): orjson.loads(outcome) for mutation_id, outcome in rows}
        fresh = [mutation for mutation in mutations if mutation.id > last_id]
        await lock_for_batch(
            tx,
            cancelled={
                mutation.args["order_id"]
                for mutation in fresh
                if mutation.name == "cancel_order"
                and isinstance(mutation.args.get("order_id"), str)
            },
            purchased_from={
                listing_id
                for mutation in fresh
                if mutation.name == "purchase_request"
                for listing_id in listings_named(mutation.args)
            },
        )
        await insert_interests(tx, principal, interests_in(fresh))
        results: list[dict[str, Any]] = []
        outcomes: list[dict[str, Any]] = []
        high_water = last_id
        for mutation in mutations:
            if mutation.id <= high_water:
                previous = stored.get(mutation.id)
                results.append(
                    previous
                    or rejected(
                        mutation.id,
                        "stale_mutation",
                        "This id is at or below one already processed; it was not applied.",
                    )
                )
                continue
            outcome = await apply_mutation(tx, principal, mutation)
            results.append(outcome)
            outcomes.append(
                {
                    "client_id": client_id,
                    "mutation_id": mutation.id,
                    "outcome": orjson.dumps(outcome).decode(),
                    "created_at": now_ms(),
                }
            )
            high_water = mutation.id
        if outcomes:
            await tx.conn.execute(insert(MutationResult), outcomes)
            await tx.conn.execute(
                update(SyncClient)
                .where(SyncClient.client_id == client_id)
                .values(last_mutation_id=high_water, updated_at=now_ms())
            )
        return results

    return await changelog.run(work)


def interests_in(mutations: list[Mutation]) -> list[ExpressInterest]:
    """The valid interest expressions of a batch (an invalid one is refused in its turn)."""
    found: list[ExpressInterest] = []
    for mutation in mutations:
        if mutation.name == "express_interest":
            try:
                found.append(parse(mutation.args, ExpressInterest))
            except InvalidArgs:
                continue
    return found


CLIENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{8,64}$")
MAX_MUTATIONS = 100
MAX_MUTATION_ID = 2**63 - 1  # stored as BIGINT


def check_batch(client_id: str, mutations: list[Mutation]) -> None:
    """What every transport (HTTP, WebSocket) checks before a batch reaches the database:
    a bad batch gets a 4xx naming the field, never a database error on every resend."""
    if not CLIENT_ID.fullmatch(client_id):
        raise ValidationFailed(
            "client_id must be 8 to 64 characters of [A-Za-z0-9_.:-]", field="client_id"
        )
    if len(mutations) > MAX_MUTATIONS:
        raise ValidationFailed(f"at most {MAX_MUTATIONS} mutations per push", field="mutations")
    previous = 0
    for mutation in mutations:
        if not previous < mutation.id <= MAX_MUTATION_ID:
            raise ValidationFailed(
                "mutation ids must be positive, below 2^63 and strictly increasing",
                field="mutations[].id",
            )
        previous = mutation.id
