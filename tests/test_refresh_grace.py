"""The refresh-token reuse grace window (PROTOCOL.md, "Auth"; REFRESH_REUSE_GRACE_SECONDS).

On a flaky link the server spends a token and the answer is lost; the phone retries with the
token it still holds. Within the window that retry (or a second request of the same app
refreshing at the same moment) gets a new pair of the same family and nothing is revoked;
after the window, reuse revokes the whole family, every token handed out during the window
included.

Every test runs on each token store: the database store on SQLite (embedded), the Redis store
(services) and the database store on PostgreSQL under its row lock (services, no REDIS_URL).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis

from sync_server.app import create_app
from sync_server.settings import ConfigError, Settings
from tests.conftest import Backend
from tests.support import services as real
from tests.support.api import Api, register
from tests.support.live_server import serve_in_thread

ServerFor = Callable[[str | None], str]


@pytest.fixture(scope="module", params=["default-store", "database-store"])
def store(request: pytest.FixtureRequest, backend: Backend) -> str:
    """default-store: the store the backend picks (SQLite table / Redis); database-store: the
    table on PostgreSQL, which only the services backend can add."""
    if request.param == "database-store" and not backend.is_services:
        pytest.skip("embedded already runs the database store (on SQLite)")
    return "redis" if backend.is_services and request.param == "default-store" else "database"


@pytest.fixture(scope="module")
def server_for(backend: Backend, store: str) -> Iterator[ServerFor]:
    """A server per grace setting (None: the variable unset, i.e. the default), started once."""
    started: dict[str | None, str] = {}
    with contextlib.ExitStack() as stack:

        def get(grace: str | None) -> str:
            if grace not in started:
                overrides = {} if grace is None else {"REFRESH_REUSE_GRACE_SECONDS": grace}
                if store == "database":
                    overrides["REDIS_URL"] = ""
                settings = backend.settings(**overrides)
                assert (settings.redis_url is not None) == (store == "redis")
                started[grace] = stack.enter_context(serve_in_thread(create_app(settings)))
            return started[grace]

        yield get


def refresh(base_url: str, token: str) -> httpx.Response:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        return client.post("/api/auth/refresh", json={"refresh_token": token})


def assert_pair(response: httpx.Response, base_url: str, user_id: str) -> str:
    """A 200 with a working access token for the user; returns the new refresh token."""
    assert response.status_code == 200, response.text
    body = response.json()
    me = Api(base_url, body["access_token"]).get("/api/me")
    assert me.status_code == 200 and me.json()["id"] == user_id
    return str(body["refresh_token"])


def assert_reused(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "refresh_token_reused"


def assert_alive(base_url: str, token: str, user_id: str) -> str:
    return assert_pair(refresh(base_url, token), base_url, user_id)


def assert_dead(base_url: str, token: str) -> None:
    response = refresh(base_url, token)
    assert response.status_code == 401, response.text


def race_refresh(clients: list[httpx.Client], token: str) -> list[httpx.Response]:
    """Every client presents the same token at the same moment, from its own thread."""
    barrier = threading.Barrier(len(clients))
    answers: list[httpx.Response | None] = [None] * len(clients)

    def present(index: int) -> None:
        barrier.wait(timeout=10)
        answers[index] = clients[index].post("/api/auth/refresh", json={"refresh_token": token})

    threads = [threading.Thread(target=present, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert all(answer is not None for answer in answers), "a racing refresh never answered"
    return [answer for answer in answers if answer is not None]


def test_the_setting_defaults_to_60_and_0_turns_it_off() -> None:
    secret = {"JWT_SECRET": "x" * 32, "DATABASE_URL": "sqlite:///unused.db"}
    assert Settings.from_environ(secret).refresh_reuse_grace_seconds == 60
    assert Settings().refresh_reuse_grace_seconds == 60
    off = Settings.from_environ({**secret, "REFRESH_REUSE_GRACE_SECONDS": "0"})
    assert off.refresh_reuse_grace_seconds == 0
    with pytest.raises(ConfigError, match="REFRESH_REUSE_GRACE_SECONDS"):
        Settings.from_environ({**secret, "REFRESH_REUSE_GRACE_SECONDS": "-1"})


def test_two_refreshes_at_once_both_get_a_pair_and_nothing_is_revoked(
    server_for: ServerFor,
) -> None:
    base_url = server_for(None)  # the default window (60 s)
    api = register(base_url)
    user_id, token = api.user["id"], api.refresh_token
    assert token is not None
    clients = [httpx.Client(base_url=base_url, timeout=30) for _ in range(2)]
    try:
        for _ in range(5):
            for client in clients:  # connections open before the race: only the POSTs race
                assert client.get("/healthz").status_code == 200
            answers = race_refresh(clients, token)
            successors = [assert_pair(answer, base_url, user_id) for answer in answers]
            assert len(set(successors)) == len(successors) and token not in successors
            # Both successors work (each rotated once), so nothing was revoked; the next round
            # races the newest token of the same family.
            token = assert_alive(base_url, successors[0], user_id)
            assert_alive(base_url, successors[1], user_id)
    finally:
        for client in clients:
            client.close()
    assert_alive(base_url, token, user_id)


def test_a_retry_after_a_lost_answer_within_the_window_gets_a_pair(
    server_for: ServerFor,
) -> None:
    base_url = server_for(None)
    api = register(base_url)
    user_id, token = api.user["id"], api.refresh_token
    assert token is not None
    lost = assert_pair(refresh(base_url, token), base_url, user_id)  # the phone never sees it
    retried = assert_pair(refresh(base_url, token), base_url, user_id)
    assert retried not in (lost, token)
    # The family is alive: the retry's token rotates, and so does the lost one's.
    newest = assert_alive(base_url, retried, user_id)
    assert_alive(base_url, lost, user_id)
    assert_alive(base_url, newest, user_id)


def test_reuse_after_the_window_revokes_the_family_and_the_grace_tokens(
    server_for: ServerFor,
) -> None:
    base_url = server_for("1")
    api = register(base_url)
    user_id, token = api.user["id"], api.refresh_token
    assert token is not None
    first = assert_pair(refresh(base_url, token), base_url, user_id)
    retried = assert_pair(refresh(base_url, token), base_url, user_id)  # within the window
    head = assert_alive(base_url, first, user_id)  # the family moves on
    time.sleep(2.5)  # past the 1-second window (waiting only; no duration is asserted)
    assert_reused(refresh(base_url, token))
    for member in (first, retried, head):
        assert_dead(base_url, member)


def test_without_a_window_reuse_revokes_at_once(server_for: ServerFor) -> None:
    base_url = server_for("0")
    api = register(base_url)
    user_id, token = api.user["id"], api.refresh_token
    assert token is not None
    successor = assert_pair(refresh(base_url, token), base_url, user_id)
    assert_reused(refresh(base_url, token))
    assert_dead(base_url, successor)
    assert_dead(base_url, token)


def test_a_revoked_family_stays_dead_within_the_window(server_for: ServerFor) -> None:
    base_url = server_for(None)
    api = register(base_url)
    user_id, token = api.user["id"], api.refresh_token
    assert token is not None
    successor = assert_pair(refresh(base_url, token), base_url, user_id)
    signed_out = Api(base_url).post("/api/auth/logout", json={"refresh_token": successor})
    assert signed_out.status_code == 204
    assert_dead(base_url, token)  # spent a moment ago, but its family is revoked
    assert_dead(base_url, successor)


def test_a_token_spent_before_the_upgrade_counts_as_outside_the_window(
    backend: Backend, store: str, server_for: ServerFor
) -> None:
    """The Redis store used to mark a spent token with '1'; that reads as long past."""
    if store != "redis":
        pytest.skip("the Redis store's spent marker only")
    base_url = server_for(None)
    api = register(base_url)
    user_id, token = api.user["id"], api.refresh_token
    assert token is not None
    successor = assert_pair(refresh(base_url, token), base_url, user_id)
    key = f"{backend.env['REDIS_PREFIX']}rt:{token.split('.')[0]}"
    with redis.Redis.from_url(real.REDIS_URL) as client:
        assert int(client.hget(key, "spent") or 0) > 1_000_000_000_000  # a time in ms
        client.hset(key, "spent", "1")
    assert_reused(refresh(base_url, token))
    assert_dead(base_url, successor)
