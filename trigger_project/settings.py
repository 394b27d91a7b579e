"""One settings module; environments differ only in their environment variables (README: Configuration)."""

import os
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from redis.backoff import NoBackoff
from redis.retry import Retry

from mollifier.packer import ArgumentPacker
from trigger_project import embedded
from trigger_project.env import env, env_bool, env_int, env_pair

BASE_DIR = Path(__file__).resolve().parent.parent

# Off unless asked for: a deployment that forgets the variable must not serve tracebacks and
# settings. `make run` (trigger_project/dev.py) and the test settings turn it on themselves.
DEBUG = env_bool("DEBUG", False)
if not DEBUG and not os.environ.get("SECRET_KEY"):
    raise ImproperlyConfigured(
        "Set the SECRET_KEY environment variable: DEBUG is off (the default), so there is no development "
        "key. For local development set DEBUG=1 (make run and make test do)."
    )
SECRET_KEY = env("SECRET_KEY", "dev-only-insecure-secret-key-change-me")
# Former keys, comma-separated: what they signed (presigned packet URLs, admin sessions) still verifies.
SECRET_KEY_FALLBACKS = [k.strip() for k in env("SECRET_KEY_FALLBACKS", "").split(",") if k.strip()]
ALLOWED_HOSTS = [h.strip() for h in env("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [o.strip() for o in env("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]

# HTTPS (README: Production). With DEBUG off the defaults are the safe ones. Behind a proxy that
# terminates TLS, set SECURE_PROXY_SSL_HEADER (e.g. HTTP_X_FORWARDED_PROTO,https) so that Django
# knows which requests came in over HTTPS; only behind a proxy that sets that header itself.
SECURE_PROXY_SSL_HEADER = env_pair("SECURE_PROXY_SSL_HEADER")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
# The redirect is for browsers (the admin). Health checks and scrapers call plain HTTP on purpose,
# and an API client never gains from one: its key has already crossed the wire, and a 301 turns the
# SDK's POST into a GET. Publish the API on HTTPS only, at the proxy (docs/OPERATIONS.md).
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$", r"^api/"]
# HSTS binds browsers to HTTPS for the whole domain for this long and is hard to take back: opt-in.
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
# Only the admin uses cookies (the API authenticates with a bearer key).
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "drf_spectacular",
    "mollifier",
    "runs",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # the admin's CSS/JS, offline, under any server
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "trigger_project.middleware.DatabaseUnavailablePage",  # last: it sees the views' exceptions first
]

ROOT_URLCONF = env("DJANGO_ROOT_URLCONF", "trigger_project.urls")  # the benchmark adds a no-op view
WSGI_APPLICATION = "trigger_project.wsgi.application"
ASGI_APPLICATION = "trigger_project.asgi.application"
# The SDK's paths have no trailing slash; redirecting a POST would break it.
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Postgres: DATABASE_URL, else the embedded server in .dev/. Only its address is read here: importing
# the settings starts no server (`make run`, `make services` and the test suite start them).
DATABASES = {
    "default": dj_database_url.parse(
        env("DATABASE_URL", "") or embedded.postgres_url(),
        # A new connection per request cut a writing view from ~400 to ~75 req/s here (DESIGN §10).
        conn_max_age=env_int("DB_CONN_MAX_AGE", 600),
        conn_health_checks=True,
    )
}
_db_options = DATABASES["default"].setdefault("OPTIONS", {})
# A unix-socket URL (`?host=/dir`, as the embedded server gives) belongs in HOST, where Django looks.
if _socket_dir := _db_options.pop("host", None):
    DATABASES["default"]["HOST"] = _socket_dir
_db_options["connect_timeout"] = env_int("DB_CONNECT_TIMEOUT", 5)
# A slow Postgres answers 503 (retried by the SDK) instead of holding a worker until it is killed.
DB_STATEMENT_TIMEOUT_MS = env_int("DB_STATEMENT_TIMEOUT_MS", 10_000)
_db_options["options"] = f"-c statement_timeout={DB_STATEMENT_TIMEOUT_MS}"
# A Postgres that does not answer at all never enforces its statement_timeout: the client gives up
# on its own after this long and closes the connection (trigger_project/postgres/base.py). 0: never.
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["ENGINE"] = "trigger_project.postgres"
DATABASES["default"]["ANSWER_TIMEOUT_MS"] = env_int("DB_ANSWER_TIMEOUT_MS", DB_STATEMENT_TIMEOUT_MS + 2000)  # type: ignore[typeddict-unknown-key]  # read by our backend
# The web processes' Postgres breaker (trigger_project/postgres/breaker.py): this many connection
# failures or unanswered statements in a row (0: no breaker) make requests skip Postgres for the
# cooldown (503 at once; enrolled organisations' triggers buffered) until a probe finds it answering.
DB_BREAKER_FAILURES = env_int("DB_BREAKER_FAILURES", 1)
DB_BREAKER_COOLDOWN_MS = env_int("DB_BREAKER_COOLDOWN_MS", 2000)

REDIS_URL = env("REDIS_URL", "") or embedded.redis_url()
# The time budget of one Redis call on a request path (DESIGN §12): short, and never retried (a
# retry multiplies a hang). A Redis that stops answering opens the circuit breaker after a few such
# calls (mollifier/breaker.py), and then costs nothing until it answers again.
REDIS_SOCKET_TIMEOUT_MS = env_int("MOLLIFIER_REDIS_SOCKET_TIMEOUT_MS", 500)
REDIS_CONNECT_TIMEOUT_MS = env_int("MOLLIFIER_REDIS_CONNECT_TIMEOUT_MS", 250)
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "trigger",
        "OPTIONS": {
            "SOCKET_CONNECT_TIMEOUT": REDIS_CONNECT_TIMEOUT_MS / 1000,
            "SOCKET_TIMEOUT": REDIS_SOCKET_TIMEOUT_MS / 1000,
            # ArgumentPacker: commands packed in C (mollifier/packer.py).
            "CONNECTION_POOL_KWARGS": {"retry": Retry(NoBackoff(), 0), "command_packer": ArgumentPacker()},
            # Every Redis failure as one exception of the mollifier's, behind its circuit breaker
            # (mollifier/client.py).
            "REDIS_CLIENT_CLASS": "mollifier.client.BufferRedis",
        },
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = env("STATIC_ROOT", "") or None  # only for `collectstatic`; WhiteNoise serves from the apps
# Served straight from the apps' static folders: no collectstatic step for `make run`.
WHITENOISE_USE_FINDERS = True

# Request bodies are bounded by the API's own parsers (413 with a JSON error), not by Django's
# 400-with-HTML guard, which would answer before the view could.
DATA_UPLOAD_MAX_MEMORY_SIZE = None

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["runs.api.authentication.SecretKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["runs.api.parsers.BoundedJSONParser"],
    "EXCEPTION_HANDLER": "runs.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Mollifier",
    "DESCRIPTION": "The trigger.dev SDK v4 run API, with a Redis buffer that shields Postgres from bursts.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_AUTHENTICATION": [],
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "RunStatusEnum": "runs.models.RunStatus",
        "BatchStatusEnum": "runs.models.BatchTaskRun.Status",
    },
}

# The run API's own limits (README: Configuration).
TRIGGER: dict[str, Any] = {
    # Largest request body the JSON endpoints read; the SDK offloads payloads over 128 KiB.
    "MAX_BODY_BYTES": env_int("TRIGGER_MAX_BODY_BYTES", 1024 * 1024),
    # Largest NDJSON body of one batch-items request.
    "MAX_BATCH_BODY_BYTES": env_int("TRIGGER_MAX_BATCH_BODY_BYTES", 32 * 1024 * 1024),
    "MAX_BATCH_ITEMS": env_int("TRIGGER_MAX_BATCH_ITEMS", 1000),
    "MAX_TAGS_PER_RUN": env_int("TRIGGER_MAX_TAGS_PER_RUN", 10),
    "MAX_METADATA_BYTES": env_int("TRIGGER_MAX_METADATA_BYTES", 256 * 1024),
    "REQUEST_IDEMPOTENCY_TTL_SECONDS": env_int("TRIGGER_REQUEST_IDEMPOTENCY_TTL_SECONDS", 24 * 3600),
    # Buffered runs a listing reads at a time, and at most per page (runs/conf.py).
    "LIST_BUFFER_SCAN": env_int("TRIGGER_LIST_BUFFER_SCAN", 500),
    "LIST_BUFFER_SCAN_MAX": env_int("TRIGGER_LIST_BUFFER_SCAN_MAX", 10_000),
    # A change to a run a drainer holds waits this long for it, then answers 503 (the SDK retries).
    "MID_DRAIN_WAIT_SECONDS": float(env("TRIGGER_MID_DRAIN_WAIT_SECONDS", "2")),
    "MID_DRAIN_POLL_SECONDS": 0.02,
    # ~50-way contention on one buffered run's metadata (the original's figure).
    "METADATA_CAS_ATTEMPTS": env_int("TRIGGER_METADATA_CAS_ATTEMPTS", 12),
    # A keyed marker is kept at least this long after it was made (runs/services/keyed_markers.py).
    "KEYED_MARKER_KEEP_SECONDS": env_int("TRIGGER_KEYED_MARKER_KEEP_SECONDS", 60),
    # How long a web process trusts a key's environment (and its organisation's flags); 0 disables.
    "AUTH_CACHE_SECONDS": float(env("TRIGGER_AUTH_CACHE_SECONDS", "2")),
}

# Large payloads (README: Large payloads): the SDK offloads payloads of 128 KiB or more to an object
# store through presigned URLs that this service signs and serves itself, over storages["packets"].
PACKETS: dict[str, Any] = {
    "MAX_BYTES": env_int("PACKETS_MAX_BYTES", 10 * 1024 * 1024),
    "URL_TTL_SECONDS": env_int("PACKETS_URL_TTL_SECONDS", 900),
    # Objects no run names are removed by `packets_cleanup` once this long unused.
    "CLEANUP_GRACE_SECONDS": env_int("PACKETS_CLEANUP_GRACE_SECONDS", 24 * 3600),
    # Base of the presigned URLs (e.g. https://api.example.com behind a proxy); empty: the request's host.
    "PUBLIC_URL": env("PACKETS_PUBLIC_URL", "").rstrip("/"),
}


def packets_s3_waits(timeout_s: float, max_bytes: int) -> dict:
    """Bounded waits for the object store (S3Storage options). boto3's own are 60 s to connect and
    60 s per read, five attempts, and a download retries those five times again: minutes, while a
    web worker (and, for an upload, the packet's row lock) waits, past gunicorn's 30 s worker
    timeout. Here: two attempts of at most ``timeout_s`` each, one download attempt, and every
    packet one request (no multipart chain: packets are at most ``max_bytes``). A store that still
    fails answers 503, which the SDK retries."""
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    return {
        "client_config": Config(
            connect_timeout=timeout_s, read_timeout=timeout_s, retries={"total_max_attempts": 2, "mode": "standard"}
        ),
        "transfer_config": TransferConfig(multipart_threshold=max_bytes + 1, num_download_attempts=1),
    }


def _packets_storage() -> dict:
    backend = env("PACKETS_BACKEND", "filesystem")
    if backend == "filesystem":
        # Overwriting lets the SDK retry an upload to the same presigned URL.
        location = env("PACKETS_ROOT", "") or str(BASE_DIR / ".dev" / "packets")
        return {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": location, "allow_overwrite": True},
        }
    if backend == "s3":
        options = {
            "bucket_name": env("PACKETS_S3_BUCKET"),
            "location": env("PACKETS_S3_PREFIX", ""),
            "endpoint_url": env("PACKETS_S3_ENDPOINT_URL", "") or None,
            "region_name": env("PACKETS_S3_REGION", "") or None,
            # Unset: boto3's own chain (AWS_* variables, instance role, …).
            "access_key": env("PACKETS_S3_ACCESS_KEY_ID", "") or None,
            "secret_key": env("PACKETS_S3_SECRET_ACCESS_KEY", "") or None,
            "addressing_style": env("PACKETS_S3_ADDRESSING_STYLE", "") or None,
            "file_overwrite": True,
            **packets_s3_waits(float(env("PACKETS_S3_TIMEOUT_SECONDS", "5")), PACKETS["MAX_BYTES"]),
        }
        return {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options}
    raise ImproperlyConfigured(f"PACKETS_BACKEND must be filesystem or s3, got {backend!r}.")


STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "packets": _packets_storage(),
}

# The mollifier (README: Configuration). Where trigger.dev has the same knob, the name is the same
# without its TRIGGER_ prefix. mollifier/conf.py reads this at call time, never at import.
MOLLIFIER: dict[str, Any] = {
    "ENABLED": env_bool("MOLLIFIER_ENABLED", False),
    "SHADOW_MODE": env_bool("MOLLIFIER_SHADOW_MODE", False),
    "TRIP_THRESHOLD": env_int("MOLLIFIER_TRIP_THRESHOLD", 100),
    "TRIP_WINDOW_MS": env_int("MOLLIFIER_TRIP_WINDOW_MS", 200),
    "HOLD_MS": env_int("MOLLIFIER_HOLD_MS", 500),
    "GLOBAL_TRIP_THRESHOLD": env_int("MOLLIFIER_GLOBAL_TRIP_THRESHOLD", 0),  # 0: no global gate
    "GLOBAL_TRIP_WINDOW_MS": env_int("MOLLIFIER_GLOBAL_TRIP_WINDOW_MS", 200),
    "GLOBAL_HOLD_MS": env_int("MOLLIFIER_GLOBAL_HOLD_MS", 500),
    "CLAIM_TTL_SECONDS": env_int("MOLLIFIER_CLAIM_TTL_SECONDS", 30),
    "CLAIM_MIN_TTL_SECONDS": env_int("MOLLIFIER_CLAIM_MIN_TTL_SECONDS", 5),
    "CLAIM_WAIT_MS": env_int("MOLLIFIER_CLAIM_WAIT_MS", 5000),
    "CLAIM_POLL_MS": env_int("MOLLIFIER_CLAIM_POLL_MS", 25),
    "ORG_BUFFER_CAP": env_int("MOLLIFIER_ORG_BUFFER_CAP", 100_000),
    "ORG_BUFFER_MAX_BYTES": env_int("MOLLIFIER_ORG_BUFFER_MAX_BYTES", 256 * 1024 * 1024),  # 0: no byte cap
    # Past this share of Redis's maxmemory, new entries are refused (those triggers pass through).
    "REDIS_MEMORY_LIMIT_PERCENT": env_int("MOLLIFIER_REDIS_MEMORY_LIMIT_PERCENT", 80),
    "REDIS_MEMORY_CHECK_MS": env_int("MOLLIFIER_REDIS_MEMORY_CHECK_MS", 1000),
    "ACK_GRACE_MS": env_int("MOLLIFIER_ACK_GRACE_MS", 30_000),
    # Keep each buffered run's row encoded for the drain's COPY (runs/copy_rows.py), its payload
    # there only: a third less drain CPU per row, a quarter more Redis memory per waiting run
    # (docs/BENCHMARKS.md, P2 and P5).
    "STORE_ROWS": env_bool("MOLLIFIER_STORE_ROWS", False),
    "DRAIN_BATCH_SIZE": env_int("MOLLIFIER_DRAIN_BATCH_SIZE", 100),
    "DRAIN_MAX_ROWS_PER_SEC": env_int("MOLLIFIER_DRAIN_MAX_ROWS_PER_SEC", 5000),
    # The drain rate (mollifier/rate.py): adaptive between the floor and MAX_ROWS_PER_SEC (the
    # ceiling), cut when a round's write takes longer than the target or fails; or fixed at the ceiling.
    "DRAIN_RATE_MODE": env("MOLLIFIER_DRAIN_RATE_MODE", "adaptive"),
    "DRAIN_MIN_ROWS_PER_SEC": env_int("MOLLIFIER_DRAIN_MIN_ROWS_PER_SEC", 100),
    "DRAIN_TARGET_COMMIT_MS": env_int("MOLLIFIER_DRAIN_TARGET_COMMIT_MS", 100),
    "DRAIN_RATE_RISE_SECONDS": env_int("MOLLIFIER_DRAIN_RATE_RISE_SECONDS", 10),
    "DRAIN_RATE_CUT_PERCENT": env_int("MOLLIFIER_DRAIN_RATE_CUT_PERCENT", 50),
    # Shares of the drain under contention by environment type (mollifier/priority.py).
    "DRAIN_WEIGHTS": env("MOLLIFIER_DRAIN_WEIGHTS", "production:8,staging:2,preview:1,development:1"),
    "DRAIN_LEASE_MS": env_int("MOLLIFIER_DRAIN_LEASE_MS", 30_000),
    "DRAIN_MAX_ATTEMPTS": env_int("MOLLIFIER_DRAIN_MAX_ATTEMPTS", 8),
    "DRAIN_PARK_AFTER": env_int("MOLLIFIER_DRAIN_PARK_AFTER", 3),
    "DRAIN_BACKOFF_BASE_MS": env_int("MOLLIFIER_DRAIN_BACKOFF_BASE_MS", 250),
    "DRAIN_BACKOFF_MAX_MS": env_int("MOLLIFIER_DRAIN_BACKOFF_MAX_MS", 30_000),
    "DRAIN_IDLE_SLEEP_MS": env_int("MOLLIFIER_DRAIN_IDLE_SLEEP_MS", 100),
    "STALE_AFTER_MS": env_int("MOLLIFIER_STALE_AFTER_MS", 60_000),
    "SINK": env("MOLLIFIER_SINK", "runs.services.materialise.TaskRunSink"),
    # Environment names, types (drain weights) and enrolled organisations (mollifier/directory.py).
    "DIRECTORY": "runs.selectors.BufferDirectory",
    "REDIS_ALIAS": "default",
    "REDIS_CLUSTER_URL": env("MOLLIFIER_REDIS_CLUSTER_URL", ""),
    "REDIS_SOCKET_TIMEOUT_MS": REDIS_SOCKET_TIMEOUT_MS,
    "REDIS_CONNECT_TIMEOUT_MS": REDIS_CONNECT_TIMEOUT_MS,
    "REDIS_BREAKER_FAILURES": env_int("MOLLIFIER_REDIS_BREAKER_FAILURES", 3),  # 0: no breaker
    "REDIS_BREAKER_COOLDOWN_MS": env_int("MOLLIFIER_REDIS_BREAKER_COOLDOWN_MS", 2000),
}

METRICS_TOKEN = env("METRICS_TOKEN", "")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {
        # A 503 (a store not answering) is an answer the SDK retries, logged on one line of ours
        # (runs.api.*_unavailable): Django's ERROR line for each one would only repeat it.
        "not_503": {
            "()": "django.utils.log.CallbackFilter",
            "callback": lambda record: getattr(record, "status_code", None) != 503,
        }
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"django.request": {"filters": ["not_503"]}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
}
