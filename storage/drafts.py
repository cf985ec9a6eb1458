"""What a listing import accepts: drafts of listings read from somewhere else (the farm's
Facebook posts today). Storage defines the shape; the Facebook integration produces it, so
storage never imports a provider."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Draft:
    title: str
    price: int  # MUR cents
    unit: str


@dataclass(frozen=True)
class PostDrafts:
    post_id: str
    message: str
    created_time: str | None
    picture: str | None
    permalink: str | None
    drafts: list[Draft]
