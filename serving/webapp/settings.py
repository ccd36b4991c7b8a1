"""Django settings, read from environment variables (12-factor; no settings files to edit).

Environment:
  SECRET_KEY             required unless DEBUG is true (production refuses to start).
  DEBUG                  "1"/"true" for development; default false.
  ALLOWED_HOSTS          comma-separated host names (default "localhost,127.0.0.1").
  CSRF_TRUSTED_ORIGINS   comma-separated origins (e.g. "https://histopath.example.org").
  BEHIND_HTTPS_PROXY     "1" when a TLS-terminating proxy (an Ingress) sets
                         X-Forwarded-Proto: the site is then HTTPS-only (Secure cookies,
                         HSTS, http redirected).
  SECURE_COOKIES         "1" to send session/CSRF cookies over HTTPS only (implied by the above).
  HSTS_SECONDS           Strict-Transport-Security max-age over HTTPS (default one year).
  DATABASE_URL           "sqlite:////abs/path.sqlite3" (default: $HISTOPATH_STATE_DIR/
                         webapp.sqlite3) or "postgres://user:password@host:5432/name"
                         (PostgreSQL needs the `psycopg` package); read by dj-database-url.
  HISTOPATH_LOCKOUT_FAILURES  failed sign-ins of one user name that lock it (5) ...
  HISTOPATH_LOCKOUT_MINUTES   ... for this long (15).
  HISTOPATH_KEEP_FILENAMES    "1" to record the original names of uploaded files (default:
                              only a hash and the name the user chooses).
  HISTOPATH_STATE_DIR    folder for the default SQLite database (~/.local/state/histopath).
  HISTOPATH_SERVING_DIR  pushed models (<dir>/<model>/<version>/) for the embedded backend.
  HISTOPATH_MODEL_NAME   served model name (default "histopath").
  TF_SERVING_URL         if set, predict through this TF Serving/KServe REST endpoint
                         (e.g. "http://model-server:8501") instead of in-process.
  HISTOPATH_RELOAD_INTERVAL   seconds between checks for a newer pushed version (5).
  HISTOPATH_MAX_UPLOAD_BYTES  largest accepted image, upload or URL (10 MiB).
  HISTOPATH_MAX_IMAGE_PIXELS  largest accepted width*height (40 million).
  HISTOPATH_MAX_DECODED_MB    most megabytes (10^6 bytes) an image's samples may take once
                              decoded: bytes per sample x channels x pixels (120, i.e. the
                              pixel limit of 8-bit RGB), checked from the header.
  HISTOPATH_DECODE_BUDGET_MB  most decoded-image megabytes in flight per worker process
                              (120: one image of the largest size at a time, smaller ones beside
                              it); beyond it uploads wait their turn (60 s at most).
  HISTOPATH_URL_TIMEOUT       seconds allowed for fetching an image URL, all of it (10).
  HISTOPATH_URL_FETCHES       image URLs fetched at once per process (4); one more is refused
                              at once, so uploads and /healthz always get a worker thread.
  HISTOPATH_REQUEST_THREADS   complete requests Django handles at once per worker (8; set
                              by `histopath serve --threads`).
  HISTOPATH_BODY_TIMEOUT      seconds a request body may take to arrive (120), then 408.
  HISTOPATH_BUFFERED_MB       megabytes of request bodies being received at once per worker
                              (160; memory up to 64 KiB each, then temporary files), then 503.
  HISTOPATH_URL_ALLOWLIST     comma-separated IPs/CIDRs/host names an image URL may use
                              even though they are loopback/private (default: none).
  HISTOPATH_SLIDE_DIR         where uploaded slides and slide results are kept
                              ($HISTOPATH_STATE_DIR/slides).
  HISTOPATH_SLIDE_ROOT        a folder of slides pathologists may pick from (default: none),
                              or a bucket URI (gs://bucket/prefix, any tf.io.gfile scheme):
                              listed through tf.io.gfile, a picked slide copied in like an
                              upload (docs/slides.md).
  HISTOPATH_MAX_SLIDE_BYTES   largest slide upload, streamed to disk (4 GB = 4 * 1024^3).
  HISTOPATH_SLIDE_BODY_TIMEOUT  seconds a slide upload may take to arrive (3600).
  HISTOPATH_SLIDE_UPLOADS     slide uploads received at once per worker process (4), then 503.
  HISTOPATH_SLIDE_WORKERS     slide jobs each web worker process runs at once (1; 0: only
                              `histopath webapp slide_worker` runs them).
  HISTOPATH_SLIDE_MODEL_MPP, HISTOPATH_SLIDE_TILE_PX  the model's scale, over what its
                              model_info says (needed for a model whose model_info does not
                              say it).
  HISTOPATH_SLIDE_STALE_MINUTES  a running job whose worker has not reported for this long
                              is queued again (10).
"""

from __future__ import annotations

import os
import pathlib

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
    """`DATABASE_URL` as one entry of Django's `DATABASES` (dj-database-url), with SQLite set
    up for several gunicorn threads writing at once.

    Raises:
      ImproperlyConfigured: a URL dj-database-url does not understand.
    """
    import dj_database_url

    try:
        database = dj_database_url.parse(url, conn_max_age=60)
    except (ValueError, KeyError) as error:
        raise ImproperlyConfigured(f"DATABASE_URL {url!r} is not a database URL ({error})") from None
    if database["ENGINE"].endswith("sqlite3"):
        if not database.get("NAME") or database["NAME"] in (":memory:", "/"):
            raise ImproperlyConfigured(f"DATABASE_URL {url!r} names no SQLite file")
        database["CONN_MAX_AGE"] = 0
        # Wait for the lock, take it at BEGIN (no deadlock on upgrade) and let readers run
        # beside the writer.
        database["OPTIONS"] = {"timeout": 30, "transaction_mode": "IMMEDIATE",
                               "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"}
    return database


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
HTTPS = env_bool("BEHIND_HTTPS_PROXY", False)
if HTTPS:  # the proxy terminates TLS and says so; everything is then HTTPS-only
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SECURE_HSTS_SECONDS = int(os.environ.get("HSTS_SECONDS", str(365 * 24 * 3600)))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # probes come over plain HTTP inside the cluster
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = HTTPS or env_bool("SECURE_COOKIES", False)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_AGE = 8 * 3600  # a working day

_state_dir = pathlib.Path(
    os.environ.get("HISTOPATH_STATE_DIR", pathlib.Path.home() / ".local" / "state" / "histopath")
)
DATABASE_URL = os.environ.get("DATABASE_URL") or f"sqlite:///{_state_dir.resolve() / 'webapp.sqlite3'}"
DATABASES = {"default": database_from_url(DATABASE_URL)}

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "histopath.serving.webapp.predictions",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "histopath.serving.webapp.predictions.middleware.RequestSizeLimitMiddleware",
    "histopath.serving.webapp.predictions.middleware.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Every page needs a signed-in user but /healthz and the sign-in page (@login_not_required).
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

AUTHENTICATION_BACKENDS = ["histopath.serving.webapp.predictions.accounts.LockoutModelBackend"]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "index"
LOGOUT_REDIRECT_URL = "login"
HISTOPATH_LOCKOUT_FAILURES = int(os.environ.get("HISTOPATH_LOCKOUT_FAILURES", "5"))
HISTOPATH_LOCKOUT_MINUTES = float(os.environ.get("HISTOPATH_LOCKOUT_MINUTES", "15"))
HISTOPATH_KEEP_FILENAMES = env_bool("HISTOPATH_KEEP_FILENAMES", False)
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

ROOT_URLCONF = "histopath.serving.webapp.urls"
WSGI_APPLICATION = "histopath.serving.webapp.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "OPTIONS": {"context_processors": [
            "django.template.context_processors.request",
            "django.contrib.auth.context_processors.auth",
            "django.contrib.messages.context_processors.messages",
        ], "loaders": [
            "django.template.loaders.filesystem.Loader",
            "django.template.loaders.app_directories.Loader",  # the admin's templates
        ]},
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
HISTOPATH_MAX_DECODED_MB = float(os.environ.get("HISTOPATH_MAX_DECODED_MB", "120"))
HISTOPATH_DECODE_BUDGET_MB = float(os.environ.get("HISTOPATH_DECODE_BUDGET_MB", "120"))
HISTOPATH_URL_TIMEOUT = float(os.environ.get("HISTOPATH_URL_TIMEOUT", "10"))
HISTOPATH_URL_ALLOWLIST = env_list("HISTOPATH_URL_ALLOWLIST")
HISTOPATH_URL_FETCHES = int(os.environ.get("HISTOPATH_URL_FETCHES", "4"))
FILE_UPLOAD_MAX_MEMORY_SIZE = 4 * 1024 * 1024  # larger uploads spill to a temp file
# Complete requests Django handles at once per worker process (`histopath serve --threads`);
# requests still arriving wait in the event loop (serving/webapp/asgi.py), not in a thread.
HISTOPATH_REQUEST_THREADS = int(os.environ.get("HISTOPATH_REQUEST_THREADS", "8"))
HISTOPATH_BODY_TIMEOUT = float(os.environ.get("HISTOPATH_BODY_TIMEOUT", "120"))
HISTOPATH_BUFFERED_MB = float(os.environ.get("HISTOPATH_BUFFERED_MB", "160"))

# --- whole slides (predictions/slide_*.py) -----------------------------------------------
HISTOPATH_SLIDE_DIR = os.environ.get("HISTOPATH_SLIDE_DIR") or str(_state_dir.resolve() / "slides")
HISTOPATH_SLIDE_ROOT = os.environ.get("HISTOPATH_SLIDE_ROOT", "")
HISTOPATH_MAX_SLIDE_BYTES = int(os.environ.get("HISTOPATH_MAX_SLIDE_BYTES", str(4 * 1024**3)))
HISTOPATH_SLIDE_BODY_TIMEOUT = float(os.environ.get("HISTOPATH_SLIDE_BODY_TIMEOUT", "3600"))
HISTOPATH_SLIDE_UPLOADS = int(os.environ.get("HISTOPATH_SLIDE_UPLOADS", "4"))
HISTOPATH_SLIDE_WORKERS = int(os.environ.get("HISTOPATH_SLIDE_WORKERS", "1"))
HISTOPATH_SLIDE_MODEL_MPP = float(os.environ.get("HISTOPATH_SLIDE_MODEL_MPP") or 0) or None
HISTOPATH_SLIDE_TILE_PX = int(os.environ.get("HISTOPATH_SLIDE_TILE_PX") or 0) or None
HISTOPATH_SLIDE_STALE_MINUTES = float(os.environ.get("HISTOPATH_SLIDE_STALE_MINUTES", "10"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}
