"""Django app configuration."""

from django.apps import AppConfig


class PredictionsConfig(AppConfig):
    """The app that classifies images and records every prediction."""

    name = "histopath.serving.webapp.predictions"
    label = "predictions"
    verbose_name = "Histopathology predictions"
    default_auto_field = "django.db.models.BigAutoField"
