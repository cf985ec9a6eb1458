"""Draft listings from Facebook posts: one per offer, idempotent by post and position.

`source_ref = fb:<post id>:<n>` is unique, so importing the same post again (a re-run, a
repeated webhook) creates nothing new. Drafts are invisible to buyers until an admin
reviews and publishes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from integrations.facebook.parser import PostDrafts
from storage.changelog import ChangeLog
from storage.listings import create_listing
from storage.models import Listing


@dataclass
class ImportReport:
    posts: int = 0
    created: int = 0
    already_imported: int = 0
    without_offers: int = 0
    listing_ids: list[str] = field(default_factory=list)


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
            existing = set(
                (
                    await conn.execute(
                        select(Listing.source_ref).where(Listing.source_ref.in_(refs))
                    )
                ).scalars()
            )
        for ref, draft in zip(refs, post.drafts, strict=True):
            if ref in existing:
                report.already_imported += 1
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
