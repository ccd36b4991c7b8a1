"""gunicorn settings for the web app (`gunicorn -c python:histopath.serving.webapp.gunicorn_conf`).

Each worker loads the model before it accepts requests, so the first pathologist does not
wait for TensorFlow; loading can take a while, hence the generous timeout.
"""

import os

timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = 10
accesslog = "-"
errorlog = "-"
worker_class = "gthread"


def post_worker_init(worker) -> None:
    """Loads the model in the freshly forked worker (threads do not survive a fork)."""
    from histopath.serving.webapp.predictions.backends import get_backend

    get_backend().warm_up()
