"""Draft listings from Facebook posts: one per offer, idempotent by post and position.

`source_ref = fb:<post id>:<n>` is unique, so importing the same post again (a re-run, a
repeated webhook) creates nothing new. Drafts are invisible to buyers until an admin
reviews and publishes them.

The post's picture is handed to Cloudinary by URL (Cloudinary fetches it) and stored as
`facebook/<post id>`; every draft of the post shows it. Facebook's picture URLs expire, so
linking to them would break within days. A picture that cannot be stored does not stop the
import: the draft is created without it, and the next import of that post tries again.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from storage.changelog import ChangeLog
from storage.drafts import PostDrafts
from storage.listings import create_listing, locked_listing, update_listing
from storage.models import Listing
from storage.records import notify_admins

log = logging.getLogger("freshroots.imports")


class PictureStore(Protocol):
    """Where post pictures go (Cloudinary's upload by URL)."""

    async def upload_from_url(
        self, url: str, public_id: str, *, tags: Sequence[str] = ()
    ) -> str: ...


@dataclass
class ImportReport:
    posts: int = 0
    created: int = 0
    updated_drafts: int = 0
    suggestions: int = 0
    already_imported: int = 0
    without_offers: int = 0
    pictures_stored: int = 0
    pictures_failed: int = 0
    listing_ids: list[str] = field(default_factory=list)


class _PostPicture:
    """A post's picture, stored at most once however many of its drafts need it, and only
    when one does (`None`: no picture, Cloudinary off, or the upload failed)."""

    def __init__(
        self, pictures: PictureStore | None, post: PostDrafts, report: ImportReport
    ) -> None:
        self._pictures, self._post, self._report = pictures, post, report
        self._asked = False
        self._public_id: str | None = None

    async def public_id(self) -> str | None:
        if not self._asked:
            self._asked = True
            self._public_id = await self._store()
        return self._public_id

    async def _store(self) -> str | None:
        post, report = self._post, self._report
        if self._pictures is None or not post.picture:
            return None
        public_id = "facebook/" + re.sub(r"[^A-Za-z0-9_-]", "_", post.post_id)
        try:
            stored = await self._pictures.upload_from_url(
                post.picture, public_id, tags=("facebook",)
            )
        except Exception as error:  # a provider outage must not lose the draft itself
            log.warning(
                "facebook picture not stored", extra={"post": post.post_id, "error": str(error)}
            )
            report.pictures_failed += 1
            return None
        report.pictures_stored += 1
        return stored


async def _attach_picture(changelog: ChangeLog, listing_id: str, public_id: str) -> None:
    async with changelog.transaction() as tx:
        await update_listing(tx, None, listing_id, {"images": [public_id]})


async def _revisit(
    changelog: ChangeLog,
    listing: Any,
    draft: Any,
    report: ImportReport,
    picture: _PostPicture,
) -> None:
    """An edited post: a draft follows it; a published listing is never overwritten, and a
    new price is put to the admins as a suggestion instead. A draft whose picture could not
    be stored last time gets it now."""
    if (
        listing.status == "draft"
        and listing.deleted_at is None
        and orjson.loads(listing.images or "[]") == []
    ):
        public_id = await picture.public_id()
        if public_id is not None:
            await _attach_picture(changelog, listing.id, public_id)
    if listing.deleted_at is not None or (
        (listing.title, listing.price, listing.unit) == (draft.title, draft.price, draft.unit)
    ):
        report.already_imported += 1
        return
    async with changelog.transaction() as tx:
        # Decided on the row as it is now, not as it was read before this transaction: an
        # admin may have published or deleted the draft meanwhile, and a published listing is
        # never overwritten (its change would also have been logged for admins only).
        current = await locked_listing(tx, listing.id)
        if current is None or current["deleted_at"] is not None:
            report.already_imported += 1
        elif current["status"] == "draft":
            await update_listing(
                tx,
                None,
                listing.id,
                {"title": draft.title[:200], "price": draft.price, "unit": draft.unit},
            )
            report.updated_drafts += 1
        elif current["price"] != draft.price:
            await notify_admins(
                tx,
                "listing_suggestion",
                "Price change on Facebook",
                f"The farm's post now says Rs {draft.price / 100:,.2f} for {current['title']} "
                f"(listed at Rs {current['price'] / 100:,.2f}).",
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
    changelog: ChangeLog,
    posts: list[PostDrafts],
    page_ref: str = "facebook",
    pictures: PictureStore | None = None,
) -> ImportReport:
    report = ImportReport()
    for post in posts:
        report.posts += 1
        if not post.drafts:
            report.without_offers += 1
            continue
        picture = _PostPicture(pictures, post, report)

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
                            Listing.images,
                        ).where(Listing.source_ref.in_(refs))
                    )
                ).all()
            }
        for ref, draft in zip(refs, post.drafts, strict=True):
            if ref in existing:
                await _revisit(changelog, existing[ref], draft, report, picture)
                continue
            public_id = await picture.public_id()  # before the transaction: no lock over HTTP
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
                            "images": [public_id] if public_id else [],
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
