"""`histopath model-server`, `histopath serve` and `histopath webapp`: the serving commands.

Heavy imports (TensorFlow, FastAPI, Django) happen inside the handlers so that
`histopath --help` stays instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import sys

from histopath.errors import ConfigError

ASGI_APP = "histopath.serving.webapp.asgi:application"
GUNICORN_CONFIG = "python:histopath.serving.webapp.gunicorn_conf"
SETTINGS_MODULE = "histopath.serving.webapp.settings"
DEV_SECRET_KEY = "insecure-development-only-key"  # noqa: S105  (--dev only)


def register(subparsers) -> None:
    """Adds the serving sub-commands to the `histopath` parser."""
    server = subparsers.add_parser(
        "model-server",
        help="serve the newest pushed model with TensorFlow Serving's REST and gRPC APIs",
        description="Serves the newest version under MODEL_BASE_PATH/MODEL_NAME/ with "
        "TensorFlow Serving's REST API (POST /v1/models/NAME:predict, GET /v1/models/NAME, "
        ".../metadata) and gRPC PredictionService and ModelService, and nothing else (no load or "
        "unload endpoint). A newly pushed version is loaded and swapped in without a restart; "
        "one that fails to load is retried.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    server.add_argument("--model-base-path", required=True, type=pathlib.Path,
                        help="folder holding MODEL_NAME/<version>/ SavedModels")
    server.add_argument("--model-name", required=True, help="the served model name")
    server.add_argument("--rest-port", type=int, default=8501, help="REST port")
    server.add_argument("--grpc-port", type=int, default=8500, help="gRPC port")
    server.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on: this machine only by default; 0.0.0.0 (all "
                        "interfaces) only where a firewall or NetworkPolicy admits the web app alone")
    server.add_argument("--allowed-hosts", default=os.environ.get("HISTOPATH_MODEL_SERVER_ALLOWED_HOSTS", ""),
                        help="comma-separated Host header names REST answers (besides localhost, "
                        "127.0.0.1, ::1 and --host); '*' for any [env HISTOPATH_MODEL_SERVER_ALLOWED_HOSTS]")
    server.add_argument("--poll-interval", type=float, default=5.0,
                        help="seconds between checks for a newly pushed version")
    server.add_argument("--max-request-mb", type=float, default=32.0,
                        help="largest request body / gRPC message in MiB")
    server.add_argument("--max-decoded-mb", type=float, default=120.0,
                        help="most megabytes (10^6 bytes) one image's samples may take once decoded (bytes "
                        "per sample x channels x pixels), checked from its header; the default is "
                        "histopath.images.DEFAULT_MAX_DECODED_BYTES")
    server.add_argument("--inference-threads", type=int, default=4,
                        help="threads running TensorFlow")
    server.set_defaults(handler=run_model_server)

    serve = subparsers.add_parser(
        "serve",
        help="start the pathologists' web app (gunicorn; --dev for Django's dev server)",
        description="Runs database migrations, then serves the web app with gunicorn "
        "(production: SECRET_KEY must be set; ALLOWED_HOSTS, DATABASE_URL and the other "
        "settings come from the environment, see histopath/serving/webapp/settings.py). "
        "Predictions come from TF_SERVING_URL when given, else from the newest model under "
        "--serving-dir, loaded in-process.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("--port", type=int, default=8000, help="HTTP port")
    serve.add_argument("--host", default="127.0.0.1",
                       help="interface to listen on (0.0.0.0 in a container)")
    serve.add_argument("--serving-dir", type=pathlib.Path,
                       default=os.environ.get("HISTOPATH_SERVING_DIR"),
                       help="pushed models (<dir>/<model>/<version>/) [env HISTOPATH_SERVING_DIR]")
    serve.add_argument("--model-name", default=os.environ.get("HISTOPATH_MODEL_NAME", "histopath"),
                       help="served model name [env HISTOPATH_MODEL_NAME]")
    serve.add_argument("--tf-serving-url", default=os.environ.get("TF_SERVING_URL"),
                       help="TF Serving / model-server REST base URL, e.g. http://host:8501 "
                       "[env TF_SERVING_URL]")
    serve.add_argument("--workers", type=int, default=1,
                       help="gunicorn worker processes (each loads the model)")
    serve.add_argument("--threads", type=int, default=8,
                       help="complete requests each worker handles at once (requests still arriving "
                       "wait in its event loop, not in a thread)")
    serve.add_argument("--dev", action="store_true",
                       help="Django's development server with DEBUG on (never in production)")
    serve.set_defaults(handler=run_web_app)

    webapp = subparsers.add_parser(
        "webapp",
        help="run a Django management command of the web app (createsuperuser, adduser, ...)",
        description="Runs one of the web app's Django management commands with the same settings "
        "as `histopath serve` (SECRET_KEY, DATABASE_URL, ... from the environment); no manage.py "
        "is needed. The database is migrated first. Examples:\n"
        "  DJANGO_SUPERUSER_USERNAME=admin DJANGO_SUPERUSER_PASSWORD=... DJANGO_SUPERUSER_EMAIL=a@b.org \\\n"
        "    histopath webapp createsuperuser --noinput\n"
        "  PASSWORD=... histopath webapp adduser jdoe --role pathologist --password-env PASSWORD\n"
        "  histopath webapp help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    webapp.add_argument("django_args", nargs=argparse.REMAINDER, metavar="COMMAND [ARGS]",
                        help="the Django command and its arguments")
    webapp.set_defaults(handler=run_webapp_command)


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_model_server(args: argparse.Namespace) -> int:
    """Handler of `histopath model-server`."""
    base = args.model_base_path
    if not base.is_dir():
        raise ConfigError(f"--model-base-path {base} is not a folder")
    for flag, port in (("--rest-port", args.rest_port), ("--grpc-port", args.grpc_port)):
        if not 0 < port < 65536:
            raise ConfigError(f"{flag} {port} is not a valid port")
    if args.rest_port == args.grpc_port:
        raise ConfigError("--rest-port and --grpc-port must differ")
    _configure_logging()
    from histopath.serving.model_server import ModelServerConfig, run_model_server as run

    run(
        ModelServerConfig(
            model_base_path=base,
            model_name=args.model_name,
            rest_port=args.rest_port,
            grpc_port=args.grpc_port,
            host=args.host,
            allowed_hosts=tuple(item.strip() for item in args.allowed_hosts.split(",") if item.strip()),
            poll_interval_s=args.poll_interval,
            max_request_bytes=int(args.max_request_mb * 1024 * 1024),
            max_decoded_bytes=int(args.max_decoded_mb * 1e6),
            inference_threads=args.inference_threads,
        )
    )
    return 0


def web_app_environment(args: argparse.Namespace, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the web app runs with, from the flags and the current environment.

    Raises:
      ConfigError: production without SECRET_KEY, or no model source.
    """
    env = dict(os.environ if base is None else base)
    env["DJANGO_SETTINGS_MODULE"] = SETTINGS_MODULE
    env["HISTOPATH_MODEL_NAME"] = args.model_name
    if args.tf_serving_url:
        env["TF_SERVING_URL"] = args.tf_serving_url
    else:
        env.pop("TF_SERVING_URL", None)
        if args.serving_dir is None:
            raise ConfigError("give --serving-dir (or HISTOPATH_SERVING_DIR) or --tf-serving-url")
        if not args.serving_dir.is_dir():
            raise ConfigError(f"--serving-dir {args.serving_dir} is not a folder")
        env["HISTOPATH_SERVING_DIR"] = str(args.serving_dir.resolve())
    if args.dev:
        env["DEBUG"] = "1"
        env.setdefault("SECRET_KEY", DEV_SECRET_KEY)
    else:
        env["DEBUG"] = "0"
        if not env.get("SECRET_KEY"):
            raise ConfigError("SECRET_KEY is not set; production refuses to start without it "
                              "(use --dev for a local trial)")
    return env


NO_MIGRATE_FIRST = {"", "help", "migrate", "makemigrations", "showmigrations", "sqlmigrate", "check"}


def _setup_django() -> None:
    """Imports the settings, creates the SQLite folder when needed, and sets Django up."""
    import django

    from histopath.serving.webapp.settings import DATABASES

    database = DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        pathlib.Path(database["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    django.setup()


def run_webapp_command(args: argparse.Namespace) -> int:
    """Handler of `histopath webapp COMMAND ...`."""
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS_MODULE
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import call_command, execute_from_command_line

    try:
        _setup_django()
    except ImproperlyConfigured as error:
        raise ConfigError(str(error)) from None
    command = args.django_args[0] if args.django_args else ""
    if command not in NO_MIGRATE_FIRST:
        call_command("migrate", interactive=False, verbosity=0)
    execute_from_command_line(["histopath webapp", *(args.django_args or ["help"])])
    return 0


def run_web_app(args: argparse.Namespace) -> int:
    """Handler of `histopath serve`: migrate, then gunicorn (or runserver with --dev)."""
    env = web_app_environment(args)
    os.environ.update(env)
    if not args.tf_serving_url:
        os.environ.pop("TF_SERVING_URL", None)
    from django.core.management import call_command

    _setup_django()
    call_command("migrate", interactive=False, verbosity=1)
    if args.dev:
        from histopath.serving.webapp.predictions.slide_jobs import start_workers

        start_workers()  # gunicorn workers start theirs in post_worker_init
        call_command("runserver", f"{args.host}:{args.port}", use_reloader=False)
        return 0
    command = [
        sys.executable, "-m", "gunicorn", ASGI_APP,
        "--config", GUNICORN_CONFIG,
        "--bind", f"[{args.host}]:{args.port}" if ":" in args.host else f"{args.host}:{args.port}",
        "--workers", str(args.workers),
    ]
    os.environ["HISTOPATH_REQUEST_THREADS"] = str(args.threads)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(command[0], command, os.environ)  # gunicorn replaces this process
    return 0  # not reached
