"""Configuration, read once from the environment into one typed, immutable object.

Every knob the server has lives here. `Settings.from_environ()` validates at start-up and
names the offending variable in its error; secrets are never part of `repr()`.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from storage.redis_client import RedisTarget

DEFAULT_SQLITE_FILE = "freshroots.db"
SECRET_FILE_NAME = ".freshroots_jwt_secret"  # noqa: S105 - a file name, not a secret


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable."""


def _bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true/false, got {raw!r}")


def _int(environ: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def _choice(environ: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = (environ.get(name) or default).strip().lower()
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _list(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = environ.get(name, "")
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _secret_from_file(directory: Path) -> str:
    """Embedded default only: a secret generated on first start and kept beside the database."""
    path = directory / SECRET_FILE_NAME
    if path.exists():
        return path.read_text().strip()
    directory.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    # O_EXCL: two processes starting together must not each write a different secret.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    return value


@dataclass(frozen=True)
class RateLimits:
    enabled: bool = True
    # Per account: a burst of wrong passwords for one email is cut off quickly.
    login_failures_per_account: int = 10
    login_failure_window: int = 900
    # Per IP, failed logins only: generous, because many phones share a carrier NAT address.
    login_failures_per_ip: int = 200
    registrations_per_ip: int = 200
    registration_window: int = 3600
    # Authenticated routes are limited per user, never per IP.
    requests_per_user: int = 600
    user_window: int = 60


def _hosts(environ: Mapping[str, str], name: str) -> tuple[tuple[str, int], ...]:
    hosts = []
    for item in _list(environ, name):
        host, colon, port = item.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{name} must be a comma-separated list of host:port, got {item!r}")
        hosts.append((host.strip("[]"), int(port)))
    return tuple(hosts)


@dataclass(frozen=True)
class Settings:
    database_url: str = f"sqlite:///{DEFAULT_SQLITE_FILE}"
    # PostgreSQL streaming replicas for read-only work (storage/replicas.py); empty = none.
    database_replica_urls: tuple[str, ...] = field(default=(), repr=False)
    # A replica further behind the primary than this is taken out of rotation until it is
    # back within it; replicas are checked this often. The lag limit must stay well under
    # HEAD_CACHE_SECONDS (see storage/replicas.py and sync_server/reading.py).
    replica_max_lag_seconds: float = 10.0
    replica_check_seconds: float = 1.0
    redis_url: str | None = None
    # Redis through Sentinel, instead of REDIS_URL: the sentinels' addresses and the name of
    # the master they watch; the servers follow a failover by themselves.
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_sentinel_master: str | None = None
    redis_password: str | None = field(default=None, repr=False)
    redis_sentinel_password: str | None = field(default=None, repr=False)
    redis_prefix: str = "fr:"
    jwt_secret: str = field(default="", repr=False)
    access_token_seconds: int = 900
    refresh_token_seconds: int = 60 * 60 * 24 * 30
    # Seconds after a refresh token was spent during which presenting it again (a retry after
    # a lost answer, two refreshes at once) gets a new pair instead of revoking the family.
    refresh_reuse_grace_seconds: int = 60
    bcrypt_rounds: int = 12
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 1024 * 1024
    rate_limits: RateLimits = RateLimits()
    changelog_retention_seconds: int = 60 * 60 * 24 * 30
    prune_interval_seconds: int = 600
    pull_default_limit: int = 200
    pull_max_limit: int = 1000
    # A first sync's pages are sized in bytes (of their rows' JSON) as well as rows: with no
    # `limit` from the client, up to PULL_MAX_LIMIT rows and this many bytes a page.
    pull_page_bytes: int = 256 * 1024
    # The catalogue snapshot (v1.1): how long caches may keep it, how often the server looks
    # for a newer catalogue (and at most rebuilds one, after a short burst), and how long a
    # replaced version stays servable to a phone resuming it.
    snapshot_max_age_seconds: int = 30
    snapshot_refresh_seconds: float = 1.0
    snapshot_grace_seconds: int = 600
    # When set, GET /metrics needs `Authorization: Bearer <token>`.
    metrics_token: str | None = field(default=None, repr=False)
    listings_cache_seconds: int = 600
    head_cache_seconds: int = 30
    log_level: str = "INFO"
    ws_hello_seconds: float = 10.0
    ws_ping_seconds: float = 25.0
    ws_send_timeout_seconds: float = 30.0
    ws_queue_frames: int = 8
    ws_queue_bytes: int = 512 * 1024
    ws_per_message_deflate: bool = False
    ws_implementation: str = "auto"
    outbox_worker: str = "auto"  # auto: inside the server on SQLite; on; off
    outbox_poll_seconds: float = 2.0
    # How long a claimed batch is reserved for its worker; a worker that dies mid-batch
    # leaves it to the others after this long.
    outbox_lease_seconds: float = 60.0

    @property
    def runs_outbox_worker(self) -> bool:
        return self.outbox_worker == "on" or (self.outbox_worker == "auto" and self.is_sqlite)

    # Database connections per process: the pool's size (no overflow) and the admission
    # gate's slots; low-priority reads may use all but a reserve (storage/admission.py).
    db_pool_size: int = 10
    # Admission control (storage/admission.py, sync_server/middleware.py). How long a
    # low-priority read (pulls, listing reads, live catch-ups) may wait for a database slot
    # before a 503, and how long everything else (pushes, admin, auth, webhooks) may wait.
    admission_low_priority_wait_ms: int = 250
    admission_wait_ms: int = 3000
    # The edge answers a low-priority HTTP request 503 at once, before any work, when the
    # event loop lags more than this (work waits that long for the loop) with a few requests
    # in flight, or when this many are in flight (0 = no cap). 50 ms of lag is a loop that
    # is behind, not a burst; 256 pulls in flight are ~50 ms of encoding and bound memory.
    admission_loop_lag_ms: int = 50
    admission_max_low_priority_in_flight: int = 256
    # How many recent change-log entries each process keeps in memory to answer pulls and
    # live catch-ups without the database (0 = off).
    sync_tail_entries: int = 50_000
    shared_pages_megabytes: int = 16
    # Where this server is reachable (browsers, phones, and the server calling itself); used
    # by the payments sandbox, which serves its pages and receives its IMN here.
    public_base_url: str = "http://127.0.0.1:8000"
    # The stand-in MIPS gateway mounted at /sandbox/mips: demos and local runs only.
    payments_sandbox: bool = False
    sentry_dsn: str | None = field(default=None, repr=False)
    environ: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def uses_redis(self) -> bool:
        return self.redis_target.configured

    @property
    def redis_target(self) -> RedisTarget:
        return RedisTarget(
            url=self.redis_url,
            sentinels=self.redis_sentinels,
            master=self.redis_sentinel_master,
            password=self.redis_password,
            sentinel_password=self.redis_sentinel_password,
        )

    @property
    def is_embedded(self) -> bool:
        return self.is_sqlite and not self.uses_redis

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        database_url = env.get("DATABASE_URL") or f"sqlite:///{DEFAULT_SQLITE_FILE}"
        if not database_url.startswith(("sqlite://", "sqlite+", "postgresql://", "postgresql+")):
            raise ConfigError(
                "DATABASE_URL must start with sqlite:/// or postgresql://, got "
                f"{database_url.split('://')[0]!r}"
            )
        replica_urls = _list(env, "DATABASE_REPLICA_URLS")
        for replica_url in replica_urls:
            if not replica_url.startswith(("postgresql://", "postgresql+")):
                raise ConfigError(
                    "DATABASE_REPLICA_URLS must list postgresql:// URLs, got "
                    f"{replica_url.split('://')[0]!r}"
                )
        if replica_urls and not database_url.startswith("postgresql"):
            raise ConfigError("DATABASE_REPLICA_URLS needs DATABASE_URL on PostgreSQL")
        head_cache_seconds = _int(env, "HEAD_CACHE_SECONDS", 30, 1)
        replica_check_seconds = _float(env, "REPLICA_CHECK_SECONDS", 1.0)
        replica_max_lag_seconds = _float(env, "REPLICA_MAX_LAG_SECONDS", 10.0)
        if not 0.05 <= replica_check_seconds <= 10:
            raise ConfigError("REPLICA_CHECK_SECONDS must be between 0.05 and 10")
        lag_limit = head_cache_seconds - 2 * replica_check_seconds - 1
        if replica_urls and not 0 < replica_max_lag_seconds <= lag_limit:
            # A user's newest write is known (its head cached) for HEAD_CACHE_SECONDS; past
            # that, "a replica in rotation has it" must follow from the lag limit.
            raise ConfigError(
                "REPLICA_MAX_LAG_SECONDS must be above 0 and at most HEAD_CACHE_SECONDS - "
                f"2 x REPLICA_CHECK_SECONDS - 1 (here {head_cache_seconds} - "
                f"2 x {replica_check_seconds:g} - 1), got {replica_max_lag_seconds:g}"
            )

        redis_url = env.get("REDIS_URL") or None
        if redis_url is not None and not redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("REDIS_URL must start with redis:// or rediss://")
        redis_sentinels = _hosts(env, "REDIS_SENTINELS")
        redis_sentinel_master = env.get("REDIS_SENTINEL_MASTER") or None
        if bool(redis_sentinels) != bool(redis_sentinel_master):
            raise ConfigError("REDIS_SENTINELS and REDIS_SENTINEL_MASTER go together: set both")
        if redis_sentinels and redis_url:
            raise ConfigError(
                "Set REDIS_URL or REDIS_SENTINELS + REDIS_SENTINEL_MASTER, not both: with "
                "Sentinel the sentinels say where the master is"
            )

        jwt_secret = env.get("JWT_SECRET", "")
        if not jwt_secret:
            if not database_url.startswith("sqlite"):
                raise ConfigError(
                    "JWT_SECRET is required when DATABASE_URL is PostgreSQL: every instance must "
                    "sign tokens with the same secret (e.g. JWT_SECRET=$(openssl rand -hex 32))"
                )
            jwt_secret = _secret_from_file(sqlite_path(database_url).parent)
        elif len(jwt_secret) < 16:
            raise ConfigError("JWT_SECRET must be at least 16 characters")

        public_base_url = (env.get("PUBLIC_BASE_URL") or "http://127.0.0.1:8000").rstrip("/")
        if not public_base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"PUBLIC_BASE_URL must start with http:// or https://, got {public_base_url!r}"
            )

        limits_enabled = env.get("RATE_LIMITS", "on").strip().lower() not in {"off", "0", "false"}
        rate_limits = RateLimits(
            enabled=limits_enabled,
            login_failures_per_account=_int(env, "RATE_LOGIN_FAILURES_PER_ACCOUNT", 10, 1),
            login_failures_per_ip=_int(env, "RATE_LOGIN_FAILURES_PER_IP", 200, 1),
            registrations_per_ip=_int(env, "RATE_REGISTRATIONS_PER_IP", 200, 100),
            requests_per_user=_int(env, "RATE_REQUESTS_PER_USER_PER_MINUTE", 600, 1),
        )
        return cls(
            database_url=database_url,
            database_replica_urls=replica_urls,
            replica_max_lag_seconds=replica_max_lag_seconds,
            replica_check_seconds=replica_check_seconds,
            redis_url=redis_url,
            redis_sentinels=redis_sentinels,
            redis_sentinel_master=redis_sentinel_master,
            redis_password=env.get("REDIS_PASSWORD") or None,
            redis_sentinel_password=env.get("REDIS_SENTINEL_PASSWORD") or None,
            redis_prefix=env.get("REDIS_PREFIX", "fr:"),
            jwt_secret=jwt_secret,
            access_token_seconds=_int(env, "ACCESS_TOKEN_SECONDS", 900, 30),
            refresh_token_seconds=_int(env, "REFRESH_TOKEN_SECONDS", 60 * 60 * 24 * 30, 60),
            refresh_reuse_grace_seconds=_int(env, "REFRESH_REUSE_GRACE_SECONDS", 60, 0),
            bcrypt_rounds=_int(env, "BCRYPT_ROUNDS", 12, 10),
            cors_origins=_list(env, "CORS_ORIGINS"),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", 1024 * 1024, 1024),
            rate_limits=rate_limits,
            changelog_retention_seconds=int(_float(env, "CHANGELOG_RETENTION_DAYS", 30.0) * 86400),
            prune_interval_seconds=_int(env, "CHANGELOG_PRUNE_INTERVAL_SECONDS", 600, 1),
            pull_default_limit=_int(env, "PULL_DEFAULT_LIMIT", 200, 1),
            pull_max_limit=_int(env, "PULL_MAX_LIMIT", 1000, 1),
            pull_page_bytes=_int(env, "PULL_PAGE_BYTES", 256 * 1024, 4096),
            snapshot_max_age_seconds=_int(env, "SNAPSHOT_MAX_AGE_SECONDS", 30, 0),
            snapshot_refresh_seconds=_float(env, "SNAPSHOT_REFRESH_SECONDS", 1.0),
            snapshot_grace_seconds=_int(env, "SNAPSHOT_GRACE_SECONDS", 600, 0),
            metrics_token=env.get("METRICS_TOKEN") or None,
            listings_cache_seconds=_int(env, "LISTINGS_CACHE_SECONDS", 600, 0),
            head_cache_seconds=head_cache_seconds,
            log_level=env.get("LOG_LEVEL", "INFO").upper(),
            ws_hello_seconds=_float(env, "WS_HELLO_SECONDS", 10.0),
            ws_ping_seconds=_float(env, "WS_PING_SECONDS", 25.0),
            ws_send_timeout_seconds=_float(env, "WS_SEND_TIMEOUT_SECONDS", 30.0),
            ws_queue_frames=_int(env, "WS_QUEUE_FRAMES", 8, 2),
            ws_queue_bytes=_int(env, "WS_QUEUE_BYTES", 512 * 1024, 16 * 1024),
            ws_per_message_deflate=_bool(env, "WS_PER_MESSAGE_DEFLATE", False),
            ws_implementation=env.get("WS_IMPLEMENTATION", "auto"),
            outbox_worker=_choice(env, "OUTBOX_WORKER", ("auto", "on", "off"), "auto"),
            outbox_poll_seconds=_float(env, "OUTBOX_POLL_SECONDS", 2.0),
            outbox_lease_seconds=_float(env, "OUTBOX_LEASE_SECONDS", 60.0),
            db_pool_size=_int(env, "DB_POOL_SIZE", 10, 1),
            admission_low_priority_wait_ms=_int(env, "ADMISSION_LOW_PRIORITY_WAIT_MS", 250, 0),
            admission_wait_ms=_int(env, "ADMISSION_WAIT_MS", 3000, 0),
            admission_loop_lag_ms=_int(env, "ADMISSION_LOOP_LAG_MS", 50, 1),
            admission_max_low_priority_in_flight=_int(
                env, "ADMISSION_MAX_LOW_PRIORITY_IN_FLIGHT", 256, 0
            ),
            sync_tail_entries=_int(env, "SYNC_TAIL_ENTRIES", 50_000, 0),
            shared_pages_megabytes=_int(env, "SHARED_PAGES_MB", 16, 0),
            public_base_url=public_base_url,
            payments_sandbox=_choice(env, "PAYMENTS_SANDBOX", ("on", "off"), "off") == "on",
            sentry_dsn=env.get("SENTRY_DSN") or None,
            environ=env,
        )


def sqlite_path(database_url: str) -> Path:
    """The file behind a sqlite URL (`sqlite:///relative.db`, `sqlite:////abs/path.db`)."""
    _, _, rest = database_url.partition(":///")
    return Path(rest or DEFAULT_SQLITE_FILE).resolve()
