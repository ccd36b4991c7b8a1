"""Django settings, read from environment variables (12-factor; no settings files to edit).

Environment:
  SECRET_KEY             required unless DEBUG is true (production refuses to start).
  DEBUG                  "1"/"true" for development; default false.
  ALLOWED_HOSTS          comma-separated host names (default "localhost,127.0.0.1").
  CSRF_TRUSTED_ORIGINS   comma-separated origins (e.g. "https://histopath.example.org").
  SECURE_COOKIES         "1" to send session/CSRF cookies over HTTPS only.
  DATABASE_URL           "sqlite:////abs/path.sqlite3" (default: $HISTOPATH_STATE_DIR/
                         webapp.sqlite3) or "postgres://user:password@host:5432/name"
                         (PostgreSQL needs the `psycopg` package).
  HISTOPATH_STATE_DIR    folder for the default SQLite database (~/.local/state/histopath).
  HISTOPATH_SERVING_DIR  pushed models (<dir>/<model>/<version>/) for the embedded backend.
  HISTOPATH_MODEL_NAME   served model name (default "histopath").
  TF_SERVING_URL         if set, predict through this TF Serving/KServe REST endpoint
                         (e.g. "http://model-server:8501") instead of in-process.
  HISTOPATH_RELOAD_INTERVAL   seconds between checks for a newer pushed version (5).
  HISTOPATH_MAX_UPLOAD_BYTES  largest accepted image, upload or URL (10 MiB).
  HISTOPATH_MAX_IMAGE_PIXELS  largest accepted width*height (40 million).
  HISTOPATH_URL_TIMEOUT       seconds allowed for fetching an image URL (10).
  HISTOPATH_URL_ALLOWLIST     comma-separated IPs/CIDRs/host names an image URL may use
                              even though they are loopback/private (default: none).
"""

from __future__ import annotations

import os
import pathlib
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = pathlib.Path(__file__).resolve().parent


def env_bool(name: str, default: bool = False) -> bool:
    """Reads a boolean environment variable ("1", "true", "yes", "on" are true)."""
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def env_list(name: str, default: str = "") -> list[str]:
    """Reads a comma-separated environment variable into a list of non-empty items."""
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def database_from_url(url: str) -> dict:
    """Turns a `DATABASE_URL` ("sqlite:///path" or "postgres://...") into Django's dict.

    Args:
      url: the database URL.

    Returns:
      One entry of Django's `DATABASES`.
    """
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        # dj-database-url convention: sqlite:////abs/file (absolute), sqlite:///rel/file
        path = unquote(parts.path)[1:]
        if not path or path == "/":
            raise ImproperlyConfigured(f"DATABASE_URL {url!r} names no SQLite file")
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": path,
            # Several gunicorn threads write predictions at once: wait for the lock, take
            # it at BEGIN (no deadlock on upgrade) and let readers run beside the writer.
            "OPTIONS": {
                "timeout": 30,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    if parts.scheme in ("postgres", "postgresql", "pgsql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            "CONN_MAX_AGE": 60,
        }
    raise ImproperlyConfigured(f"unsupported DATABASE_URL scheme {parts.scheme!r} (sqlite or postgres)")


DEBUG = env_bool("DEBUG", False)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set: production (DEBUG false) refuses to start without it"
        )
    SECRET_KEY = "insecure-development-only-key"  # noqa: S105  (DEBUG only)

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)
if env_bool("BEHIND_HTTPS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

_state_dir = pathlib.Path(
    os.environ.get("HISTOPATH_STATE_DIR", pathlib.Path.home() / ".local" / "state" / "histopath")
)
DATABASE_URL = os.environ.get("DATABASE_URL") or f"sqlite:///{_state_dir.resolve() / 'webapp.sqlite3'}"
DATABASES = {"default": database_from_url(DATABASE_URL)}

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.messages",
    "histopath.serving.webapp.predictions",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "histopath.serving.webapp.predictions.middleware.RequestSizeLimitMiddleware",
    "histopath.serving.webapp.predictions.middleware.ContentSecurityPolicyMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "histopath.serving.webapp.urls"
WSGI_APPLICATION = "histopath.serving.webapp.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": False,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = False
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

# --- the model -------------------------------------------------------------------------
HISTOPATH_SERVING_DIR = os.environ.get("HISTOPATH_SERVING_DIR", "serving_model")
HISTOPATH_MODEL_NAME = os.environ.get("HISTOPATH_MODEL_NAME", "histopath")
TF_SERVING_URL = os.environ.get("TF_SERVING_URL", "").rstrip("/")
HISTOPATH_RELOAD_INTERVAL = float(os.environ.get("HISTOPATH_RELOAD_INTERVAL", "5"))

# --- untrusted input -------------------------------------------------------------------
HISTOPATH_MAX_UPLOAD_BYTES = int(os.environ.get("HISTOPATH_MAX_UPLOAD_BYTES", str(10 * 1024 * 1024)))
HISTOPATH_MAX_IMAGE_PIXELS = int(os.environ.get("HISTOPATH_MAX_IMAGE_PIXELS", "40000000"))
HISTOPATH_URL_TIMEOUT = float(os.environ.get("HISTOPATH_URL_TIMEOUT", "10"))
HISTOPATH_URL_ALLOWLIST = env_list("HISTOPATH_URL_ALLOWLIST")
FILE_UPLOAD_MAX_MEMORY_SIZE = 4 * 1024 * 1024  # larger uploads spill to a temp file

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}
