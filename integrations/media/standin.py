"""A stand-in for Cloudinary's Upload API (`upload` and `destroy` for images), for tests and
local runs: point `CLOUDINARY_UPLOAD_PREFIX` at it.

It checks what Cloudinary checks before accepting a signed call: the cloud name, the API key,
the signature over every sent parameter except `file`, `cloud_name`, `resource_type`,
`api_key` (and `signature` itself), sorted and joined with `&`, the API secret appended, SHA-1
(or SHA-256, told apart by length), and a timestamp no more than one hour old. Errors come back
the way Cloudinary sends them: `{"error": {"message": ...}}` plus an `X-Cld-Error` header, with
Cloudinary's wording for the common ones ("Invalid Signature … String to sign - '…'.",
"Stale request - reported time is … which is more than 1 hour ago").

Deliberately stricter than Cloudinary in one place: a timestamp more than an hour in the
*future* is refused too, which catches a millisecond clock (`Date.now()`) in a browser.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

import cloudinary.utils
import httpx
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from integrations.media.cloudinary_media import is_valid_public_id
from integrations.media.settings import CloudinarySettings

SIGNATURE_WINDOW_SECONDS = 3600
MAX_IMAGE_BYTES = 10 * 1024 * 1024  # Cloudinary's image limit on its free plan
_UNSIGNED_PARAMS = frozenset({"file", "cloud_name", "resource_type", "api_key", "signature"})
_ALGORITHM_BY_LENGTH = {40: "sha1", 64: "sha256"}


@dataclass
class StoredImage:
    public_id: str
    version: int
    format: str
    width: int
    height: int
    data: bytes = field(repr=False)
    tags: list[str] = field(default_factory=list)


@dataclass
class CloudinaryStandInState:
    """What tests inspect: the stored images and every call's outcome."""

    images: dict[str, StoredImage] = field(default_factory=dict)
    calls: list[tuple[str, int]] = field(default_factory=list)  # (action, HTTP status)


@dataclass
class _Form:
    params: dict[str, str]
    file: bytes | None = None
    filename: str = ""


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def create_cloudinary_standin(
    settings: CloudinarySettings,
    *,
    clock: Callable[[], float] = time.time,
    delivery_base: str = "https://res.cloudinary.com",
) -> Starlette:
    """An ASGI app speaking `POST /v1_1/{cloud}/image/upload` and `.../image/destroy`.

    `app.state.cloudinary` is the `CloudinaryStandInState`.
    """
    state = CloudinaryStandInState()

    async def upload(request: Request) -> JSONResponse:
        return await _answer(request, "upload", _upload)

    async def destroy(request: Request) -> JSONResponse:
        return await _answer(request, "destroy", _destroy)

    async def _answer(
        request: Request,
        action: str,
        handle: Callable[[_Form], dict[str, Any]],
    ) -> JSONResponse:
        try:
            if request.path_params["cloud"] != settings.cloud_name:
                raise _Refused(401, f"Invalid cloud_name {request.path_params['cloud']}")
            form = await _read_form(request)
            _authenticate(form.params)
            if action == "upload" and form.file is None:
                form.file = await _fetch_remote(form.params.get("file", ""))
            body = handle(form)
        except _Refused as refused:
            state.calls.append((action, refused.status))
            return JSONResponse(
                {"error": {"message": refused.message}},
                status_code=refused.status,
                headers={"X-Cld-Error": refused.message},
            )
        state.calls.append((action, 200))
        return JSONResponse(body)

    def _authenticate(params: Mapping[str, str]) -> None:
        if not params.get("api_key"):
            raise _Refused(401, "Must supply api_key")
        if not hmac.compare_digest(params["api_key"], settings.api_key):
            raise _Refused(401, f"Invalid api_key {params['api_key']}")
        for required in ("timestamp", "signature"):
            if not params.get(required):
                raise _Refused(400, f"Missing required parameter - {required}")
        signature = params["signature"].lower()
        signed = {key: value for key, value in params.items() if key not in _UNSIGNED_PARAMS}
        algorithm = _ALGORITHM_BY_LENGTH.get(len(signature), "sha1")
        expected = cloudinary.utils.api_sign_request(signed, settings.api_secret, algorithm)
        if not hmac.compare_digest(signature, str(expected)):
            to_sign = cloudinary.utils.api_string_to_sign(signed)
            raise _Refused(
                401, f"Invalid Signature {params['signature']}. String to sign - '{to_sign}'."
            )
        try:
            timestamp = int(params["timestamp"])
        except ValueError:
            raise _Refused(400, f"Invalid timestamp {params['timestamp']}") from None
        age = clock() - timestamp
        if age > SIGNATURE_WINDOW_SECONDS:
            raise _Refused(
                400,
                f"Stale request - reported time is {_utc(timestamp)} which is more than 1 hour ago",
            )
        if -age > SIGNATURE_WINDOW_SECONDS:
            raise _Refused(
                400,
                f"Stale request - reported time is {_utc(timestamp)} which is more than 1 hour "
                "in the future",
            )

    def _upload(form: _Form) -> dict[str, Any]:
        params = form.params
        data = _file_bytes(form.file if form.file is not None else params.get("file"))
        info = _image_info(data)
        if info is None:
            raise _Refused(400, "Invalid image file")
        image_format, width, height = info
        allowed = [item.strip() for item in params.get("allowed_formats", "").split(",")]
        if allowed != [""] and image_format not in allowed:
            raise _Refused(400, f"Image format {image_format} not allowed")
        public_id = _public_id(params, form.filename)
        existing = state.images.get(public_id)
        if existing is not None and params.get("overwrite", "true") in {"false", "0"}:
            return {**_describe(existing, data), "existing": True}
        tags = [tag for tag in params.get("tags", "").split(",") if tag]
        version = max(int(clock()), existing.version + 1 if existing else 0)
        image = StoredImage(public_id, version, image_format, width, height, data, tags)
        state.images[public_id] = image
        return {**_describe(image, data), "existing": False}

    def _destroy(form: _Form) -> dict[str, Any]:
        public_id = form.params.get("public_id")
        if not public_id:
            raise _Refused(400, "Missing required parameter - public_id")
        return {"result": "ok" if state.images.pop(public_id, None) else "not found"}

    def _describe(image: StoredImage, data: bytes) -> dict[str, Any]:
        path = f"{settings.cloud_name}/image/upload/v{image.version}/{image.public_id}"
        secure_url = f"{delivery_base}/{path}.{image.format}"
        folder, _, _name = image.public_id.rpartition("/")
        # The response signature Cloudinary documents: public_id and version, signed (v1).
        signature = cloudinary.utils.api_sign_request(
            {"public_id": image.public_id, "version": image.version},
            settings.api_secret,
            signature_version=1,
        )
        return {
            "asset_id": hashlib.md5(image.public_id.encode(), usedforsecurity=False).hexdigest(),
            "public_id": image.public_id,
            "version": image.version,
            "version_id": secrets.token_hex(16),
            "signature": signature,
            "width": image.width,
            "height": image.height,
            "format": image.format,
            "resource_type": "image",
            "created_at": _utc(image.version, iso=True),
            "tags": image.tags,
            "bytes": len(data),
            "type": "upload",
            "etag": hashlib.md5(data, usedforsecurity=False).hexdigest(),
            "placeholder": False,
            "url": secure_url.replace("https://", "http://", 1),
            "secure_url": secure_url,
            "folder": folder,
            "asset_folder": folder,
            "api_key": settings.api_key,
        }

    app = Starlette(
        routes=[
            Route("/v1_1/{cloud}/image/upload", upload, methods=["POST"]),
            Route("/v1_1/{cloud}/image/destroy", destroy, methods=["POST"]),
        ],
        # Browsers upload straight to Cloudinary, which answers CORS; so does the stand-in.
        middleware=[Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["POST"])],
    )
    app.state.cloudinary = state
    return app


async def _read_form(request: Request) -> _Form:
    """Text fields as params (`tags[]=a&tags[]=b` joined like Cloudinary: `a,b`), the file apart.

    A text part may be as large as a base64 `data:` URI of the largest image.
    """
    result = _Form(params={})
    async with request.form(max_part_size=MAX_IMAGE_BYTES * 4 // 3 + 1024) as form:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "file":
                    raise _Refused(400, f"Unexpected file parameter {key}")
                result.file = await value.read(MAX_IMAGE_BYTES + 1)
                if len(result.file) > MAX_IMAGE_BYTES:
                    raise _Refused(400, f"File size too large. Maximum is {MAX_IMAGE_BYTES}.")
                result.filename = value.filename or ""
            elif key.endswith("[]"):
                name = key[:-2]
                params = result.params
                params[name] = f"{params[name]},{value}" if params.get(name) else value
            else:
                result.params[key] = value
    return result


async def _fetch_remote(file: str) -> bytes | None:
    """A `file` that is an http(s) URL is fetched, as Cloudinary does (upload by URL)."""
    if not file.startswith(("http://", "https://")):
        return None
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.get(file)
    except httpx.HTTPError as exc:
        raise _Refused(400, f"Error in loading {file} - {exc.__class__.__name__}") from None
    if response.status_code != 200:
        raise _Refused(
            400, f"Error in loading {file} - {response.status_code} {response.reason_phrase}"
        )
    if len(response.content) > MAX_IMAGE_BYTES:
        raise _Refused(400, f"File size too large. Maximum is {MAX_IMAGE_BYTES}.")
    return response.content


def _file_bytes(value: bytes | str | None) -> bytes:
    """An uploaded part, or a `data:` URI (Cloudinary accepts both as `file`)."""
    if value is None or value == "":
        raise _Refused(400, "Missing required parameter - file")
    if isinstance(value, bytes):
        return value
    header, sep, payload = value.partition(",")
    if not (sep and header.startswith("data:") and header.endswith(";base64")):
        raise _Refused(400, "Invalid image file")
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error:
        raise _Refused(400, "Invalid image file") from None


def _public_id(params: Mapping[str, str], filename: str) -> str:
    """Cloudinary's naming: the given id, else the file name (+ suffix), else a random id."""
    given = params.get("public_id")
    if given:
        base = given
    elif params.get("use_filename") in {"true", "1"}:
        stem = PurePosixPath(filename).stem or "image"
        unique = params.get("unique_filename", "true") not in {"false", "0"}
        base = f"{stem}_{secrets.token_hex(3)}" if unique else stem
    else:
        base = secrets.token_hex(10)
    folder = params.get("folder", "").strip("/")
    public_id = f"{folder}/{base}" if folder else base
    if not is_valid_public_id(public_id):
        raise _Refused(400, f"Invalid public_id {public_id}")
    return public_id


def _image_info(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) read from the header of a PNG, GIF, JPEG or WebP."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return "png", width, height
    if data[:6] in {b"GIF87a", b"GIF89a"} and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return "gif", width, height
    if data[:2] == b"\xff\xd8":
        return _jpeg_info(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_info(data)
    return None


def _jpeg_info(data: bytes) -> tuple[str, int, int] | None:
    index = 2
    while index + 9 <= len(data):
        if data[index] != 0xFF:
            return None
        marker = data[index + 1]
        length = struct.unpack(">H", data[index + 2 : index + 4])[0]
        # Start-of-frame markers carry the size; C4 (DHT), C8 and CC (DAC) do not.
        if 0xC0 <= marker <= 0xCF and marker not in {0xC4, 0xC8, 0xCC}:
            height, width = struct.unpack(">HH", data[index + 5 : index + 9])
            return "jpg", width, height
        index += 2 + length
    return None


def _webp_info(data: bytes) -> tuple[str, int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return "webp", width, height
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return "webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return "webp", width & 0x3FFF, height & 0x3FFF
    return None


def _utc(timestamp: int, *, iso: bool = False) -> str:
    try:
        moment = datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, OSError, ValueError):  # e.g. a millisecond timestamp
        return str(timestamp)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ" if iso else "%Y-%m-%d %H:%M:%S +0000")
