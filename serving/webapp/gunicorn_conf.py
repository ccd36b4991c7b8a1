"""gunicorn settings for the web app (`gunicorn -c python:histopath.serving.webapp.gunicorn_conf`).

Workers are uvicorn's (`uvicorn.workers.UvicornWorker`) running the ASGI app of
`serving/webapp/asgi.py`: an event loop reads every request whole before Django's threads
see it, so slow clients (one byte per second, headers or body) hold sockets, not threads.
Each worker loads the model before it accepts requests, so the first pathologist does not
wait for TensorFlow; loading can take a while, hence the generous timeout.
"""

import os

timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = 10
accesslog = "-"
errorlog = "-"
worker_class = "uvicorn.workers.UvicornWorker"
# Open connections per worker (slow ones included); uvicorn answers 503 beyond it.
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "2000"))
# Idle keep-alive connections are kept longer than clients and proxies usually keep them
# (nginx upstream 60 s), so a reused connection is rarely closed under the client.
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "75"))


def post_worker_init(worker) -> None:
    """Loads the model in the freshly forked worker (threads do not survive a fork)."""
    from histopath.serving.webapp.predictions.backends import get_backend
    from histopath.serving.webapp.predictions.slide_jobs import start_workers

    get_backend().warm_up()
    start_workers()  # HISTOPATH_SLIDE_WORKERS threads running queued slide jobs
