"""Listing images on Cloudinary: delivery URLs and signed direct uploads built offline, deletes
through the Upload API, and a stand-in of that API for tests."""

from integrations.media.cloudinary_media import (
    CloudinaryAdmin,
    CloudinaryError,
    CloudinaryMedia,
    is_valid_public_id,
    wants_low_bandwidth,
)
from integrations.media.settings import CloudinarySettings

__all__ = [
    "CloudinaryAdmin",
    "CloudinaryError",
    "CloudinaryMedia",
    "CloudinarySettings",
    "is_valid_public_id",
    "wants_low_bandwidth",
]
