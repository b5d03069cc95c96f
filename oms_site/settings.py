"""Settings, all from the environment with safe defaults.

Every variable is documented in the README's configuration table.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from celery.schedules import crontab

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    """Parse a boolean environment variable ("1", "true", "yes", "on")."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    """Parse a comma-separated environment variable."""
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", False)
# Production must set SECRET_KEY; the fallback only serves local demos and tests.
SECRET_KEY = os.environ.get(
    "SECRET_KEY", "dev-only-Zs8Qw4Lm2Xv7Rt1Yp6Nc3Hb9Kd5Jf0Ga8Ue2Wo4Ti7Sl1Mr6Vq3Xe9Bh5"
)
# HTTPS=1 in production (behind TLS): secure cookies, HSTS and the HTTPS redirect.
HTTPS = env_bool("HTTPS", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver")
CSRF_TRUSTED_ORIGINS = env_list(
    "CSRF_TRUSTED_ORIGINS", "http://127.0.0.1:8000,http://localhost:8000"
)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "channels",
    "django_celery_beat",
    "oms_site",
    "allocations",
    "compliance",
    "orders",
    "settlement",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "oms_site.middleware.AuditActorMiddleware",
]

ROOT_URLCONF = "oms_site.urls"
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
                "oms_site.context_processors.roles",
            ],
        },
    },
]
WSGI_APPLICATION = "oms_site.wsgi.application"
ASGI_APPLICATION = "oms_site.asgi.application"

DATABASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/oms")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
if not DATABASES["default"]["ENGINE"].endswith("postgresql"):
    raise RuntimeError("PostgreSQL is the only supported database (DATABASE_URL=postgres://...)")
DATABASES["default"].setdefault("OPTIONS", {})
# Server-side binding sends parameters apart from the SQL: bulk writes with thousands of values
# (allocations, audit, baskets) skip psycopg's client-side quoting, which dominated their time.
DATABASES["default"]["OPTIONS"]["server_side_binding"] = env_bool("DB_SERVER_SIDE_BINDING", True)
DATABASES["default"]["CONN_MAX_AGE"] = int(os.environ.get("DB_CONN_MAX_AGE", "0"))
DATABASES["default"]["TEST"] = {"NAME": os.environ.get("TEST_DATABASE_NAME") or None}
# Added by the orders helper: DB_POOL_MAX_SIZE>0 turns on Django's psycopg connection pool
# (needs psycopg-pool). Under ASGI every request runs in its own thread, so without a pool each
# request opens a connection and concurrent bursts exhaust max_connections.
DB_POOL_MAX_SIZE = int(os.environ.get("DB_POOL_MAX_SIZE", "0"))
# psycopg prepares a statement a connection has run this many times (None: never). Used by the
# pooled connections below and by the FIX gateway's long-lived per-thread connections.
_prepare = os.environ.get("DB_PREPARE_THRESHOLD", "5").strip().lower()
DB_PREPARE_THRESHOLD: int | None = None if _prepare == "off" else int(_prepare)
# The FIX gateway's threads keep one generic plan per prepared statement instead of planning
# the largest ones again on every run ("off": PostgreSQL's default choice).
DB_GENERIC_PLANS = os.environ.get("DB_GENERIC_PLANS", "on").strip().lower() != "off"
# The planner's cost of a page read out of order, on those same connections (with generic
# plans): the server's default (4) is made for disks; with the book in memory it made those
# plans hash whole tables instead of looking a few rows up by index ("off": the server's).
_page_cost = os.environ.get("DB_RANDOM_PAGE_COST", "1.1").strip().lower()
DB_RANDOM_PAGE_COST: float | None = None if _page_cost == "off" else float(_page_cost)
if DB_POOL_MAX_SIZE > 0:
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool, not Django, keeps connections
    DATABASES["default"]["OPTIONS"]["pool"] = {
        "min_size": min(2, DB_POOL_MAX_SIZE),
        "max_size": DB_POOL_MAX_SIZE,
        "timeout": float(os.environ.get("DB_POOL_TIMEOUT", "30")),
    }
    # A pooled connection serves many requests, so psycopg prepares a statement it has run
    # DB_PREPARE_THRESHOLD times on it: PostgreSQL then skips parsing and planning the hot
    # path's fixed statements. Django turns this off by default for external poolers
    # (PgBouncer in transaction mode), which this in-process pool is not; "off" disables it.
    DATABASES["default"]["OPTIONS"]["prepare_threshold"] = DB_PREPARE_THRESHOLD
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# pytest-xdist's workers share REDIS_URL's database: each keeps its cache keys and channel
# groups under prefixes of its own, and tests/conftest.py clears only its own keys between
# tests (a FLUSHDB by one worker emptied the others' throttle counters mid-test). Empty outside
# pytest-xdist, so every other process keeps the configured prefixes.
_WORKER_SUFFIX = (
    f"-{os.environ['PYTEST_XDIST_WORKER']}" if os.environ.get("PYTEST_XDIST_WORKER") else ""
)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"
# Login throttling: failures per username and per client address inside the window.
LOGIN_MAX_FAILURES = int(os.environ.get("LOGIN_MAX_FAILURES", "5"))
LOGIN_FAILURE_WINDOW_SECONDS = int(os.environ.get("LOGIN_FAILURE_WINDOW_SECONDS", "300"))

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# The firm's own time zone: end-of-day jobs and DAY-order expiry run on its clock.
FIRM_TIME_ZONE = os.environ.get("FIRM_TIME_ZONE", "America/New_York")

STATIC_URL = "/static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", BASE_DIR / "var" / "static"))
STATICFILES_DIRS = [BASE_DIR / "static"]
SERVE_STATIC = env_bool("SERVE_STATIC", True)
VAR_DIR = Path(os.environ.get("OMS_VAR_DIR", BASE_DIR / "var"))
SETTLEMENT_DIR = Path(os.environ.get("SETTLEMENT_DIR", VAR_DIR / "settlement"))
# Settlement: our BIC on MT54x messages (places of settlement per market are in
# settlement/services.py), reconciliation price tolerance, rows fetched per database round trip when streaming files.
SETTLEMENT_FIRM_BIC = os.environ.get("SETTLEMENT_FIRM_BIC", "OPENUS33")
RECON_PRICE_TOLERANCE = os.environ.get("RECON_PRICE_TOLERANCE", "0.0001")
SETTLEMENT_CHUNK_SIZE = int(os.environ.get("SETTLEMENT_CHUNK_SIZE", "5000"))
FIX_STORE_DIR = Path(os.environ.get("FIX_STORE_DIR", VAR_DIR / "fix"))

CACHES = {
    "default": {
        "BACKEND": "oms_site.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": os.environ.get("CACHE_PREFIX", "oms") + _WORKER_SUFFIX,
    }
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "oms_site.auth.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # DRF's parsers, refusing NUL characters (400) before they reach PostgreSQL (500).
    "DEFAULT_PARSER_CLASSES": [
        "oms_site.parsers.JSONParser",
        "oms_site.parsers.FormParser",
        "oms_site.parsers.MultiPartParser",
    ],
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_PAGINATION_CLASS": "oms_site.api.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "oms_site.errors.api_exception_handler",
    "DEFAULT_THROTTLE_RATES": {
        "order_entry": os.environ.get("ORDER_ENTRY_RATE", "6000/min"),
        "auth_token": os.environ.get("AUTH_TOKEN_RATE", "30/min"),
    },
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Open OMS API",
    "DESCRIPTION": "Orders, compliance, routing, allocations and settlement.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
}

CHANNEL_LAYERS = {
    "default": {
        # Redis pub/sub (oms_site/channel_layers.py says why): the core layer's per-process
        # receive queue fell ~30 s behind under the system run's load.
        "BACKEND": "oms_site.channel_layers.PubSubChannelLayer",
        "CONFIG": {
            # redis-py 8 reads with a 5 s socket timeout by default; commands get 30 s (the
            # subscription itself reads with its own short timeout, so idling is fine).
            "hosts": [
                {
                    "address": REDIS_URL,
                    "max_connections": 1000,
                    "socket_timeout": 30,
                    "socket_connect_timeout": 5,
                }
            ],
            # Messages waiting per connection in the web process; past it the connection is
            # told it lost events (it closes, the client refetches) instead of growing memory.
            "capacity": int(os.environ.get("CHANNEL_CAPACITY", "2000")),
            "prefix": os.environ.get("CHANNEL_PREFIX", "oms-ws") + _WORKER_SUFFIX,
        },
    }
}

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Unacknowledged tasks come back after this long when a worker dies (Redis default is 1 h).
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": int(os.environ.get("CELERY_VISIBILITY_TIMEOUT", "300")),
}
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "orders.tasks.route_*": {"queue": "routing"},
    "orders.tasks.outbox_*": {"queue": "routing"},
    "allocations.tasks.*": {"queue": "executions"},
    "settlement.tasks.*": {"queue": "settlement"},
}
CELERY_TIMEZONE = FIRM_TIME_ZONE
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
MARKET_DATA_TICK_SECONDS = float(os.environ.get("MARKET_DATA_TICK_SECONDS", "5"))
# An accepted asynchronous route (202) still pending after this long is re-published to Celery
# (its message may have been lost); running it twice routes once.
ROUTE_REQUEST_RETRY_SECONDS = float(os.environ.get("ROUTE_REQUEST_RETRY_SECONDS", "30"))
CELERY_BEAT_SCHEDULE = {
    "route-requests-resweep": {
        "task": "orders.tasks.route_requests_resweep",
        "schedule": float(os.environ.get("ROUTE_REQUEST_SWEEP_SECONDS", "10")),
    },
    "market-data-tick": {
        "task": "orders.tasks.market_data_tick",
        "schedule": MARKET_DATA_TICK_SECONDS,
    },
    "expire-day-orders": {
        "task": "orders.tasks.expire_orders",
        "schedule": crontab(hour=16, minute=5),
    },
    "end-of-day-settlement": {
        "task": "settlement.tasks.end_of_day_settlement",
        "schedule": crontab(
            hour=int(os.environ.get("EOD_HOUR", "18")),
            minute=int(os.environ.get("EOD_MINUTE", "0")),
        ),
    },
    "settle-cash": {
        "task": "allocations.tasks.settle_cash",
        "schedule": crontab(hour=6, minute=0),
    },
    "post-trade-compliance": {
        "task": "compliance.tasks.post_trade_sweep",
        "schedule": crontab(hour=18, minute=30),
    },
}

# Production hardening: `check --deploy` is clean with DEBUG=0, HTTPS=1 and a real SECRET_KEY.
SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", "31536000" if HTTPS else "0"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS
SECURE_HSTS_PRELOAD = HTTPS
SECURE_SSL_REDIRECT = HTTPS
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}
