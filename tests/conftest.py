"""Fixtures shared by several test modules of tests/ (session-scoped, built once per run).

Fixtures must be registered here, not imported into each test module, for session scope
to mean one instance per run.
"""

from serving_fixtures import django_app, exported_densenet, exported_models  # noqa: F401
