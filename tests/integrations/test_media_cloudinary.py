"""Cloudinary media: offline URLs and upload signatures, checked against the Upload API stand-in
over real HTTP (a real multipart upload of a PNG built here)."""

from __future__ import annotations

import asyncio
import hashlib
import struct
import time
import zlib
from typing import Any

import cloudinary
import cloudinary.utils
import httpx
import pytest

from integrations.media import (
    CloudinaryAdmin,
    CloudinaryError,
    CloudinaryMedia,
    CloudinarySettings,
    is_valid_public_id,
    wants_low_bandwidth,
)
from integrations.media.settings import CloudinaryConfigError
from integrations.media.standin import create_cloudinary_standin
from tests.support.live_server import serve_in_thread

SECRET = "s3cr3t-Api-Secret_xyz"
ENV = {"CLOUDINARY_URL": f"cloudinary://123456789012345:{SECRET}@fresh-roots"}


def tiny_png(width: int = 3, height: int = 2) -> bytes:
    """A valid RGB PNG of the given size, built from its chunks."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + b"\x2e\x8b\x57" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def settings_for(base_url: str, env: dict[str, str] | None = None) -> CloudinarySettings:
    settings = CloudinarySettings.from_environ(
        {**(env or ENV), "CLOUDINARY_UPLOAD_PREFIX": base_url}
    )
    assert settings is not None
    return settings


def post_upload(fields: dict[str, str], png: bytes) -> httpx.Response:
    """What the admin's browser does: every field but `upload_url`, plus the file."""
    form = {key: value for key, value in fields.items() if key != "upload_url"}
    return httpx.post(fields["upload_url"], data=form, files={"file": ("apples.png", png)})


# settings


def test_settings_parse_cloudinary_url_and_hide_the_secret() -> None:
    assert CloudinarySettings.from_environ({}) is None
    assert CloudinarySettings.from_environ({"CLOUDINARY_URL": " "}) is None
    settings = CloudinarySettings.from_environ(ENV)
    assert settings is not None
    assert (settings.cloud_name, settings.api_key) == ("fresh-roots", "123456789012345")
    assert settings.api_secret == SECRET
    assert SECRET not in repr(settings)
    assert settings.upload_url == "https://api.cloudinary.com/v1_1/fresh-roots/image/upload"
    custom = settings_for("http://127.0.0.1:9/")
    assert custom.api_url("destroy") == "http://127.0.0.1:9/v1_1/fresh-roots/image/destroy"
    sha256 = CloudinarySettings.from_environ(
        {"CLOUDINARY_URL": ENV["CLOUDINARY_URL"] + "?signature_algorithm=sha256"}
    )
    assert sha256 is not None and sha256.signature_algorithm == "sha256"


@pytest.mark.parametrize(
    "env",
    [
        {"CLOUDINARY_URL": f"https://key:{SECRET}@cloud"},
        {"CLOUDINARY_URL": "cloudinary://key@cloud"},
        {"CLOUDINARY_URL": f"cloudinary://key:{SECRET}@cloud?signature_algorithm=md5"},
        {**ENV, "CLOUDINARY_UPLOAD_PREFIX": "ftp://example"},
    ],
)
def test_malformed_settings_are_refused_without_echoing_the_secret(env: dict[str, str]) -> None:
    with pytest.raises(CloudinaryConfigError) as refused:
        CloudinarySettings.from_environ(env)
    assert SECRET not in str(refused.value)


# delivery URLs


def test_image_urls_are_responsive_https_with_auto_format_and_quality() -> None:
    media = CloudinaryMedia(settings_for("http://127.0.0.1:9"))
    urls = media.image_urls("listings/pineapple-victoria", low_bandwidth=False)
    assert set(urls) == {"thumbnail", "medium", "large"}
    for url in urls.values():
        assert url.startswith("https://res.cloudinary.com/fresh-roots/image/upload/")
        assert "/f_auto,q_auto/" in url
        assert url.endswith("/listings/pineapple-victoria")
    assert "c_fill,g_auto,h_200,w_200/" in urls["thumbnail"]
    assert "c_limit,w_600/" in urls["medium"]
    assert "c_limit,w_1200/" in urls["large"]


def test_low_bandwidth_urls_use_eco_quality_and_smaller_widths() -> None:
    media = CloudinaryMedia(settings_for("http://127.0.0.1:9"))
    normal = media.image_urls("listings/litchi", low_bandwidth=False)
    low = media.image_urls("listings/litchi", low_bandwidth=True)
    for name, url in low.items():
        assert "/f_auto,q_auto:eco/" in url
        assert url != normal[name]
    assert "w_120" in low["thumbnail"] and "w_400" in low["medium"] and "w_800" in low["large"]
    assert wants_low_bandwidth({"save-data": "on"})
    assert wants_low_bandwidth({"Save-Data": "On"})
    assert not wants_low_bandwidth({"save-data": "off"})
    assert not wants_low_bandwidth({})


def test_urls_ignore_the_process_global_cloudinary_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another app (or a stray CLOUDINARY_URL) configuring the package globally changes nothing."""
    media = CloudinaryMedia(settings_for("http://127.0.0.1:9"))
    before = media.image_urls("listings/a", low_bandwidth=False)
    config = cloudinary.config()
    for name, value in {
        "cloud_name": "someone-else",
        "secure": False,
        "cname": "evil.example.com",
        "private_cdn": True,
        "secure_distribution": "evil.example.com",
        "dpr": "2.0",
        "force_version": False,
        "sign_url": True,
        "api_secret": "other",
    }.items():
        monkeypatch.setattr(config, name, value, raising=False)
    assert media.image_urls("listings/a", low_bandwidth=False) == before


def test_public_id_validation() -> None:
    for good in ["abc", "listings/abc_123", "listings/2024/pine-apple", "a.b/c"]:
        assert is_valid_public_id(good), good
    for bad in ["", "/abc", "abc/", "a//b", "../etc", "a/../b", "a b", "a?b", "a&b", "ü", 42, None]:
        assert not is_valid_public_id(bad), bad
    assert not is_valid_public_id("x" * 256)
    assert is_valid_public_id("listings/abc", folder="listings")
    assert not is_valid_public_id("avatars/abc", folder="listings")
    with pytest.raises(ValueError):
        CloudinaryMedia(settings_for("http://127.0.0.1:9")).image_urls("../x", low_bandwidth=False)


# signed uploads


def test_signature_is_cloudinarys_sorted_params_plus_secret_sha1() -> None:
    media = CloudinaryMedia(settings_for("http://127.0.0.1:9"))
    fields = media.sign_upload(
        {"public_id": "apples", "folder": "listings", "tags": ["fruit", "local"]}, now=1_700_000_000
    )
    # Computed by hand, exactly as Cloudinary's "Generating authentication signatures" describes.
    to_sign = "folder=listings&public_id=apples&tags=fruit,local&timestamp=1700000000"
    assert fields["signature"] == hashlib.sha1((to_sign + SECRET).encode()).hexdigest()
    assert fields["api_key"] == "123456789012345"
    assert fields["timestamp"] == "1700000000"
    assert fields["tags"] == "fruit,local"
    assert fields["upload_url"] == "http://127.0.0.1:9/v1_1/fresh-roots/image/upload"
    assert SECRET not in repr(fields)


def test_sign_upload_refuses_what_it_should_not_authorize() -> None:
    media = CloudinaryMedia(settings_for("http://127.0.0.1:9"))
    refused: list[dict[str, Any]] = [
        {"notification_url": "https://evil.example/hook"},
        {"timestamp": 1},
        {"api_key": "x"},
        {"public_id": "../../etc"},
        {"folder": "a b"},
        {"tags": ["a,b"]},
    ]
    for params in refused:
        with pytest.raises(ValueError):
            media.sign_upload(params, now=1_700_000_000)
    with pytest.raises(ValueError):
        media.sign_upload({}, now=1_700_000_000_000)  # milliseconds


def test_signed_upload_is_accepted_by_the_upload_api_standin() -> None:
    settings = settings_for("http://unused", ENV)
    app = create_cloudinary_standin(settings)
    with serve_in_thread(app) as base_url:
        media = CloudinaryMedia(settings_for(base_url))
        fields = media.sign_upload(
            {"folder": "listings", "public_id": "apples-2kg", "tags": ["fruit"]},
            now=int(time.time()),
        )
        response = post_upload(fields, tiny_png(3, 2))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["public_id"] == "listings/apples-2kg"
        assert (body["width"], body["height"], body["format"]) == (3, 2, "png")
        assert body["resource_type"] == "image" and body["type"] == "upload"
        assert body["tags"] == ["fruit"]
        assert body["secure_url"] == (
            f"https://res.cloudinary.com/fresh-roots/image/upload/v{body['version']}"
            "/listings/apples-2kg.png"
        )
        # The response signature Cloudinary documents (public_id + version, signed).
        expected = cloudinary.utils.api_sign_request(
            {"public_id": body["public_id"], "version": body["version"]}, SECRET
        )
        assert body["signature"] == expected
        assert "listings/apples-2kg" in app.state.cloudinary.images

        # Without a public id Cloudinary picks a random one inside the folder.
        fields = media.sign_upload({"folder": "listings"}, now=int(time.time()))
        response = post_upload(fields, tiny_png(5, 7))
        assert response.status_code == 200, response.text
        assert response.json()["public_id"].startswith("listings/")
        assert (response.json()["width"], response.json()["height"]) == (5, 7)


def test_tampered_parameter_is_refused_with_cloudinarys_401() -> None:
    settings = settings_for("http://unused")
    with serve_in_thread(create_cloudinary_standin(settings)) as base_url:
        media = CloudinaryMedia(settings_for(base_url))
        fields = media.sign_upload({"folder": "listings"}, now=int(time.time()))
        for tamper in [{"folder": "avatars"}, {"public_id": "extra"}, {"signature": "0" * 40}]:
            response = post_upload({**fields, **tamper}, tiny_png())
            assert response.status_code == 401, tamper
            message = response.json()["error"]["message"]
            assert message.startswith("Invalid Signature ")
            assert "String to sign - '" in message
            assert SECRET not in message
            assert response.headers["x-cld-error"] == message
        # A signature made with another secret is no better.
        other = CloudinaryMedia(
            settings_for(base_url, {"CLOUDINARY_URL": "cloudinary://123456789012345:x@fresh-roots"})
        )
        response = post_upload(other.sign_upload({}, now=int(time.time())), tiny_png())
        assert response.status_code == 401


def test_signature_older_than_one_hour_is_stale() -> None:
    settings = settings_for("http://unused")
    with serve_in_thread(create_cloudinary_standin(settings)) as base_url:
        media = CloudinaryMedia(settings_for(base_url))
        now = int(time.time())
        fresh = post_upload(media.sign_upload({}, now=now - 3500), tiny_png())
        assert fresh.status_code == 200, fresh.text
        stale = post_upload(media.sign_upload({}, now=now - 3700), tiny_png())
        assert stale.status_code == 400
        message = stale.json()["error"]["message"]
        assert message.startswith("Stale request - reported time is ")
        assert message.endswith("which is more than 1 hour ago")


def test_standin_refuses_missing_or_invalid_files_and_wrong_keys() -> None:
    settings = settings_for("http://unused")
    with serve_in_thread(create_cloudinary_standin(settings)) as base_url:
        media = CloudinaryMedia(settings_for(base_url))
        fields = media.sign_upload({}, now=int(time.time()))
        form = {key: value for key, value in fields.items() if key != "upload_url"}
        missing = httpx.post(fields["upload_url"], data=form)
        assert missing.status_code == 400
        assert missing.json()["error"]["message"] == "Missing required parameter - file"
        not_image = post_upload(fields, b"hello, not an image")
        assert not_image.status_code == 400
        wrong_key = post_upload({**fields, "api_key": "999"}, tiny_png())
        assert wrong_key.status_code == 401
        wrong_cloud = httpx.post(
            f"{base_url}/v1_1/other/image/upload", data=form, files={"file": tiny_png()}
        )
        assert wrong_cloud.status_code == 401


# deleting


def test_admin_delete_image_uses_the_signed_destroy_call() -> None:
    settings = settings_for("http://unused")
    app = create_cloudinary_standin(settings)
    with serve_in_thread(app) as base_url:
        media = CloudinaryMedia(settings_for(base_url))
        fields = media.sign_upload({"public_id": "listings/to-remove"}, now=int(time.time()))
        assert post_upload(fields, tiny_png()).status_code == 200

        async def scenario() -> list[Any]:
            async with httpx.AsyncClient() as http:
                admin = CloudinaryAdmin(http, settings_for(base_url))
                first = await admin.delete_image("listings/to-remove")
                again = await admin.delete_image("listings/to-remove")
                impostor = CloudinaryAdmin(
                    http,
                    settings_for(
                        base_url, {"CLOUDINARY_URL": "cloudinary://123456789012345:no@fresh-roots"}
                    ),
                )
                with pytest.raises(CloudinaryError) as refused:
                    await impostor.delete_image("listings/x")
                stale = CloudinaryAdmin(http, settings_for(base_url), clock=lambda: 1_000_000)
                with pytest.raises(CloudinaryError) as too_old:
                    await stale.delete_image("listings/x")
                return [first, again, refused.value.status_code, too_old.value.status_code]

        assert asyncio.run(scenario()) == [True, False, 401, 400]
        assert "listings/to-remove" not in app.state.cloudinary.images


def test_admin_delete_reports_an_unreachable_api_as_cloudinary_error() -> None:
    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            admin = CloudinaryAdmin(http, settings_for("http://127.0.0.1:9"), timeout=2)
            with pytest.raises(CloudinaryError):
                await admin.delete_image("listings/x")

    asyncio.run(scenario())
