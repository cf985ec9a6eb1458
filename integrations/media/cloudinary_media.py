"""Cloudinary for listing images: delivery URLs and signed direct-upload parameters, both built
offline with the `cloudinary` package, and image deletion through the Upload API's `destroy`.

Images go from the admin's browser straight to Cloudinary (never through our server): we only
sign the upload parameters, and the listing stores the resulting public id.

Configuration choice: the `cloudinary` package keeps one process-global `cloudinary.config()`
and each helper falls back to it for every option the caller leaves out. We never write to that
global. Instead every call passes the cloud name and secret from *our* settings object, and URL
building also pins every delivery option the helper would otherwise read from the global
(`_PINNED_URL_OPTIONS`, `_PINNED_TRANSFORMATION_OPTIONS`). So two apps in one process (as in
tests) with different clouds cannot see each other's configuration, and a stray
`CLOUDINARY_URL` in the process environment changes nothing. Signing goes through
`cloudinary.utils.api_sign_request`, which is a pure function of its arguments.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

import cloudinary.utils
import httpx

from integrations.media.settings import CloudinarySettings

# Delivery options `cloudinary_url` would otherwise take from the process-global config.
_PINNED_URL_OPTIONS: Final[Mapping[str, Any]] = MappingProxyType(
    {
        "secure": True,  # https only: mixed content would be blocked on our https pages
        "private_cdn": False,
        "cname": None,
        "secure_distribution": None,
        "cdn_subdomain": False,
        "secure_cdn_subdomain": False,
        "use_fetch_format": False,
        "responsive_width": False,
        "dpr": None,
        "sign_url": False,
        "auth_token": False,
        "force_version": True,
        "shorten": False,
        "use_root_path": False,
        "long_url_signature": False,
        "url_suffix": None,
    }
)
# ...and the ones each transformation component would read (`dpr_` would leak into every one).
_PINNED_TRANSFORMATION_OPTIONS: Final[Mapping[str, Any]] = MappingProxyType(
    {"dpr": None, "responsive_width": False}
)

# Responsive widths in CSS pixels. The low-bandwidth set is for clients that send
# `Save-Data: on` (or ask for it): smaller pictures plus `q_auto:eco`, Cloudinary's
# smaller-file quality level.
IMAGE_WIDTHS: Final[Mapping[str, int]] = MappingProxyType(
    {"thumbnail": 200, "medium": 600, "large": 1200}
)
LOW_BANDWIDTH_WIDTHS: Final[Mapping[str, int]] = MappingProxyType(
    {"thumbnail": 120, "medium": 400, "large": 800}
)

# Upload parameters an admin's browser may be allowed to send. Anything else (say
# `notification_url` or `eval`) is refused, so a signature can never authorize more than we meant.
SIGNABLE_UPLOAD_PARAMS: Final = frozenset(
    {
        "public_id",
        "folder",
        "asset_folder",
        "tags",
        "context",
        "overwrite",
        "invalidate",
        "unique_filename",
        "use_filename",
        "allowed_formats",
        "upload_preset",
    }
)
# Cloudinary leaves these out of the string to sign; we set `timestamp` ourselves.
_NOT_CALLER_PARAMS: Final = frozenset(
    {"file", "cloud_name", "resource_type", "api_key", "signature", "timestamp"}
)

# Stricter than Cloudinary (which allows most characters): path segments of letters, digits,
# `_`, `-`, with single inner dots. No `..`, no empty segment, nothing that needs URL escaping.
_SEGMENT = r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*"
_PUBLIC_ID_RE: Final = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")
MAX_PUBLIC_ID_LENGTH: Final = 255  # Cloudinary's limit

UploadParam = str | int | bool | Sequence[str]


class CloudinaryError(Exception):
    """The Upload API refused a call or could not be reached."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


def is_valid_public_id(value: object, *, folder: str | None = None) -> bool:
    """True for a public id we accept from an admin; with `folder`, only ids inside it."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_PUBLIC_ID_LENGTH:
        return False
    if _PUBLIC_ID_RE.fullmatch(value) is None:
        return False
    return folder is None or value.startswith(folder.rstrip("/") + "/")


def wants_low_bandwidth(headers: Mapping[str, str]) -> bool:
    """The client-hint `Save-Data: on` (works with Starlette's case-insensitive headers too)."""
    raw = headers.get("save-data") or headers.get("Save-Data") or ""
    return "on" in {token.strip().lower() for token in raw.split(";")}


class CloudinaryMedia:
    """Offline helpers bound to one Cloudinary account's settings."""

    def __init__(self, settings: CloudinarySettings) -> None:
        self._settings = settings

    def image_urls(self, public_id: str, *, low_bandwidth: bool) -> dict[str, str]:
        """`{thumbnail, medium, large}` https URLs ending in `f_auto,q_auto` (or `q_auto:eco`)."""
        if not is_valid_public_id(public_id):
            raise ValueError(f"invalid Cloudinary public id {public_id!r}")
        widths = LOW_BANDWIDTH_WIDTHS if low_bandwidth else IMAGE_WIDTHS
        quality = "auto:eco" if low_bandwidth else "auto"
        return {
            name: self._url(public_id, _resize(name, width), quality)
            for name, width in widths.items()
        }

    def _url(self, public_id: str, resize: dict[str, Any], quality: str) -> str:
        # Resize first, then format/quality as the final component, as Cloudinary recommends:
        # `.../c_limit,w_600/f_auto,q_auto/...`.
        url, _unused = cloudinary.utils.cloudinary_url(
            public_id,
            cloud_name=self._settings.cloud_name,
            transformation=[
                {**resize, **_PINNED_TRANSFORMATION_OPTIONS},
                {"fetch_format": "auto", "quality": quality, **_PINNED_TRANSFORMATION_OPTIONS},
            ],
            **_PINNED_URL_OPTIONS,
        )
        return str(url)

    def sign_upload(self, params: Mapping[str, UploadParam], *, now: int) -> dict[str, str]:
        """Parameters for a signed direct upload from the browser.

        Every key except `upload_url` is a form field to POST to `upload_url` together with
        `file`, byte for byte as returned (the signature covers exactly these values). The
        signature is valid for one hour from `now` (Unix seconds).
        """
        if now > 10**11:  # a millisecond clock would be "in the future" for 3,000 years
            raise ValueError("now must be Unix time in seconds")
        fields = _upload_fields(params)
        fields["timestamp"] = str(int(now))
        signature = cloudinary.utils.api_sign_request(
            fields, self._settings.api_secret, self._settings.signature_algorithm
        )
        return {
            "upload_url": self._settings.upload_url,
            **fields,
            "api_key": self._settings.api_key,
            "signature": str(signature),
        }


def _resize(name: str, width: int) -> dict[str, Any]:
    if name == "thumbnail":  # square crops keep listing grids even; g_auto keeps the produce
        return {"crop": "fill", "gravity": "auto", "width": width, "height": width}
    return {"crop": "limit", "width": width}  # never upscale a small original


def _upload_fields(params: Mapping[str, UploadParam]) -> dict[str, str]:
    """Validate and turn values into the exact strings the browser will send and we sign."""
    fields: dict[str, str] = {}
    for key, value in params.items():
        if key in _NOT_CALLER_PARAMS or key not in SIGNABLE_UPLOAD_PARAMS:
            raise ValueError(f"upload parameter {key!r} cannot be signed")
        text = _field_text(key, value)
        if text:  # Cloudinary leaves empty values out of the string to sign; so do we
            fields[key] = text
    for key in ("public_id", "folder", "asset_folder"):
        if key in fields and not is_valid_public_id(fields[key]):
            raise ValueError(f"invalid {key} {fields[key]!r}")
    return fields


def _field_text(key: str, value: UploadParam) -> str:
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    if all(isinstance(item, str) and "," not in item for item in value):
        return ",".join(value)  # how Cloudinary joins list values (tags, allowed_formats)
    raise ValueError(f"upload parameter {key!r} must be text, a number, a flag or a text list")


class CloudinaryAdmin:
    """Server-side Upload API calls, signed with the API secret."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        settings: CloudinarySettings,
        *,
        clock: Callable[[], float] = time.time,
        timeout: float = 10.0,
    ) -> None:
        self._http = http
        self._settings = settings
        self._clock = clock
        self._timeout = timeout

    @classmethod
    def from_environ(
        cls, http: httpx.AsyncClient, env: Mapping[str, str], *, timeout: float = 30.0
    ) -> CloudinaryAdmin | None:
        """None when Cloudinary is not configured (`CLOUDINARY_URL` unset)."""
        settings = CloudinarySettings.from_environ(env)
        return cls(http, settings, timeout=timeout) if settings is not None else None

    async def delete_image(self, public_id: str, *, invalidate: bool = True) -> bool:
        """Destroy an image: True if deleted, False if Cloudinary had no such image.

        `invalidate` also purges CDN copies, so a removed photo stops showing within minutes.
        """
        if not is_valid_public_id(public_id):
            raise ValueError(f"invalid Cloudinary public id {public_id!r}")
        params = {"public_id": public_id, "timestamp": str(int(self._clock()))}
        if invalidate:
            params["invalidate"] = "true"
        params["signature"] = str(
            cloudinary.utils.api_sign_request(
                params, self._settings.api_secret, self._settings.signature_algorithm
            )
        )
        params["api_key"] = self._settings.api_key
        body = await self._post("destroy", params)
        result = body.get("result")
        if result == "ok":
            return True
        if result == "not found":
            return False
        raise CloudinaryError(f"unexpected destroy result {result!r}")

    async def upload_from_url(self, url: str, public_id: str, *, tags: Sequence[str] = ()) -> str:
        """Have Cloudinary fetch an image from `url` and keep it as `public_id`.

        Cloudinary downloads it, not us: a Facebook picture never crosses our link. An image
        already stored under that id is kept (`overwrite=false`), so importing the same post
        again costs no second fetch. Returns the stored public id.
        """
        if not is_valid_public_id(public_id):
            raise ValueError(f"invalid Cloudinary public id {public_id!r}")
        if not url.startswith(("https://", "http://")):
            raise ValueError("only http(s) URLs can be fetched by Cloudinary")
        params = {
            "public_id": public_id,
            "overwrite": "false",
            "timestamp": str(int(self._clock())),
        }
        if tags:
            params["tags"] = ",".join(tags)
        params["signature"] = str(
            cloudinary.utils.api_sign_request(
                params, self._settings.api_secret, self._settings.signature_algorithm
            )
        )
        # `file` and `api_key` are not part of the signature (Cloudinary's rule).
        body = await self._post(
            "upload", {**params, "file": url, "api_key": self._settings.api_key}
        )
        stored = body.get("public_id")
        if not isinstance(stored, str) or not is_valid_public_id(stored):
            raise CloudinaryError(f"upload answered an unusable public id {stored!r}")
        return stored

    async def _post(self, action: str, params: Mapping[str, str]) -> dict[str, Any]:
        try:
            response = await self._http.post(
                self._settings.api_url(action), data=dict(params), timeout=self._timeout
            )
        except httpx.HTTPError as exc:
            raise CloudinaryError(f"Cloudinary {action} failed: {exc!r}") from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise CloudinaryError(
                f"Cloudinary {action} answered {response.status_code} without JSON",
                status_code=response.status_code,
            )
        error = body.get("error")
        if response.status_code != 200 or error is not None:
            message = error.get("message") if isinstance(error, dict) else None
            raise CloudinaryError(
                f"Cloudinary {action} answered {response.status_code}: {message or body!r}",
                status_code=response.status_code,
            )
        return body
