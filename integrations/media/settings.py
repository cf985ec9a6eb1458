"""Cloudinary settings from the environment (`CLOUDINARY_URL`, `CLOUDINARY_UPLOAD_PREFIX`).

`CLOUDINARY_URL` is the form Cloudinary's console hands out and its SDKs read:
`cloudinary://<api_key>:<api_secret>@<cloud_name>`, optionally with query parameters such as
`?signature_algorithm=sha256`. The API secret never appears in `repr()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_UPLOAD_PREFIX = "https://api.cloudinary.com"
SIGNATURE_ALGORITHMS = ("sha1", "sha256")  # the two Cloudinary accepts; SHA-1 is its default


class CloudinaryConfigError(ValueError):
    """A Cloudinary variable is malformed; the message names it (never its secret)."""


@dataclass(frozen=True)
class CloudinarySettings:
    cloud_name: str
    api_key: str
    api_secret: str = field(repr=False)
    upload_prefix: str = DEFAULT_UPLOAD_PREFIX
    signature_algorithm: str = "sha1"

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> CloudinarySettings | None:
        """None when `CLOUDINARY_URL` is unset or empty: media features are then off."""
        raw = (env.get("CLOUDINARY_URL") or "").strip()
        if not raw:
            return None
        parts = urlsplit(raw)
        # The error never echoes `raw`: it holds the secret.
        if parts.scheme != "cloudinary":
            raise CloudinaryConfigError("CLOUDINARY_URL must start with cloudinary://")
        api_key = unquote(parts.username or "")
        api_secret = unquote(parts.password or "")
        # Not `parts.hostname`: that lower-cases, and a cloud name is used exactly as given.
        cloud_name = parts.netloc.rpartition("@")[2]
        if not (api_key and api_secret and cloud_name):
            raise CloudinaryConfigError(
                "CLOUDINARY_URL must look like cloudinary://<api_key>:<api_secret>@<cloud_name>"
            )
        algorithm = parse_qs(parts.query).get("signature_algorithm", ["sha1"])[-1].lower()
        if algorithm not in SIGNATURE_ALGORITHMS:
            raise CloudinaryConfigError(
                f"CLOUDINARY_URL signature_algorithm must be sha1 or sha256, got {algorithm!r}"
            )
        return cls(
            cloud_name=cloud_name,
            api_key=api_key,
            api_secret=api_secret,
            upload_prefix=_upload_prefix(env),
            signature_algorithm=algorithm,
        )

    @property
    def upload_url(self) -> str:
        return self.api_url("upload")

    def api_url(self, action: str) -> str:
        """`{prefix}/v1_1/{cloud}/image/{action}`, the Upload API's shape."""
        return f"{self.upload_prefix}/v1_1/{self.cloud_name}/image/{action}"


def _upload_prefix(env: Mapping[str, str]) -> str:
    raw = (env.get("CLOUDINARY_UPLOAD_PREFIX") or "").strip()
    if not raw:
        return DEFAULT_UPLOAD_PREFIX
    parts = urlsplit(raw)
    if parts.scheme not in {"http", "https"} or not parts.netloc or parts.query:
        raise CloudinaryConfigError(
            f"CLOUDINARY_UPLOAD_PREFIX must be an http(s) base URL, got {raw!r}"
        )
    return raw.rstrip("/")
