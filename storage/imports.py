"""Draft listings from Facebook posts: one per offer, idempotent by post and position.

`source_ref = fb:<post id>:<n>` is unique, so importing the same post again (a re-run, a
repeated webhook) creates nothing new. Drafts are invisible to buyers until an admin
reviews and publishes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from integrations.facebook.parser import PostDrafts
from storage.changelog import ChangeLog
from storage.db import now_ms
from storage.listings import create_listing
from storage.models import Listing
from storage.records import notify_admins
from storage.scopes import listing_scopes


@dataclass
class ImportReport:
    posts: int = 0
    created: int = 0
    updated_drafts: int = 0
    suggestions: int = 0
    already_imported: int = 0
    without_offers: int = 0
    listing_ids: list[str] = field(default_factory=list)


async def _revisit(changelog: ChangeLog, listing: Any, draft: Any, report: ImportReport) -> None:
    """An edited post: a draft follows it; a published listing is never overwritten, and a
    new price is put to the admins as a suggestion instead."""
    if listing.deleted_at is not None or (
        (listing.title, listing.price, listing.unit) == (draft.title, draft.price, draft.unit)
    ):
        report.already_imported += 1
        return
    async with changelog.transaction() as tx:
        if listing.status == "draft":
            values = {
                "title": draft.title[:200],
                "price": draft.price,
                "unit": draft.unit,
                "updated_at": now_ms(),
            }
            await tx.conn.execute(update(Listing).where(Listing.id == listing.id).values(**values))
            tx.changed(
                "listings",
                listing.id,
                fields=values.keys(),
                before=listing_scopes("draft", False),
                after=listing_scopes("draft", False),
            )
            report.updated_drafts += 1
        elif listing.price != draft.price:
            await notify_admins(
                tx,
                "listing_suggestion",
                "Price change on Facebook",
                f"The farm's post now says Rs {draft.price / 100:,.2f} for {listing.title} "
                f"(listed at Rs {listing.price / 100:,.2f}).",
                {"listing_id": listing.id, "suggested_price": draft.price, "order_id": None},
            )
            report.suggestions += 1
        else:
            report.already_imported += 1


def guess_category(title: str) -> str:
    lowered = title.lower()
    for words, category in (
        (("brède", "brede", "salade", "laitue", "lettuce", "cresson"), "greens"),
        (("thym", "cotomili", "persil", "oignon vert", "ti oignon"), "herbs"),
        (("oeuf", "œuf", "egg"), "eggs"),
        (("miel", "honey"), "honey"),
        (("lait", "fromage", "yaourt", "milk", "cheese"), "dairy"),
        (
            (
                "letchi",
                "mangue",
                "ananas",
                "papaye",
                "banane",
                "fraise",
                "avocat",
                "goyave",
                "citron",
                "orange",
                "fruit",
            ),
            "fruits",
        ),
    ):
        if any(word in lowered for word in words):
            return category
    return "vegetables"


async def import_posts(
    changelog: ChangeLog, posts: list[PostDrafts], page_ref: str = "facebook"
) -> ImportReport:
    report = ImportReport()
    for post in posts:
        report.posts += 1
        if not post.drafts:
            report.without_offers += 1
            continue
        refs = [f"fb:{post.post_id}:{index}" for index in range(len(post.drafts))]
        async with changelog.db.read() as conn:
            existing = {
                row.source_ref: row
                for row in (
                    await conn.execute(
                        select(
                            Listing.id,
                            Listing.source_ref,
                            Listing.status,
                            Listing.title,
                            Listing.price,
                            Listing.unit,
                            Listing.deleted_at,
                        ).where(Listing.source_ref.in_(refs))
                    )
                ).all()
            }
        for ref, draft in zip(refs, post.drafts, strict=True):
            if ref in existing:
                await _revisit(changelog, existing[ref], draft, report)
                continue
            description = f"Imported from the farm's Facebook post {post.permalink or ''}".strip()
            try:
                async with changelog.transaction() as tx:
                    listing_id = await create_listing(
                        tx,
                        None,
                        {
                            "title": draft.title[:200],
                            "price": draft.price,
                            "unit": draft.unit,
                            "stock": 0,
                            "category": guess_category(draft.title),
                            "description": description,
                            "status": "draft",
                        },
                        source=page_ref,
                        source_ref=ref,
                    )
            except IntegrityError:  # the same post imported concurrently: theirs counts
                report.already_imported += 1
                continue
            report.created += 1
            report.listing_ids.append(listing_id)
    return report
