"""Facebook Page import: a parser for how Mauritian farms post, a rate-limit-aware Graph API
client, webhook verification, and a stand-in Graph API for tests."""

from integrations.facebook.graph import (
    FacebookError,
    FacebookTokenExpired,
    FacebookUnavailable,
    GraphClient,
)
from integrations.facebook.parser import parse_feed_page, parse_message
from integrations.facebook.settings import FacebookSettings
from storage.drafts import Draft, PostDrafts  # what the parser makes: storage's shapes

__all__ = [
    "Draft",
    "FacebookError",
    "FacebookSettings",
    "FacebookTokenExpired",
    "FacebookUnavailable",
    "GraphClient",
    "PostDrafts",
    "parse_feed_page",
    "parse_message",
]
