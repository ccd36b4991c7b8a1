"""WSGI entry point, for WSGI servers that read whole requests themselves (`histopath serve` runs `asgi.py`)."""

import os

import histopath  # noqa: F401  (pins Keras 2 before the embedded backend imports TensorFlow)
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "histopath.serving.webapp.settings")

application = get_wsgi_application()
