"""Django app configuration."""

from django.apps import AppConfig


class PredictionsConfig(AppConfig):
    """The app that classifies images and records every prediction and sign-in."""

    name = "histopath.serving.webapp.predictions"
    label = "predictions"
    verbose_name = "Histopathology predictions"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.contrib.auth import signals
        from django.db.models.signals import post_migrate

        from histopath.serving.webapp.predictions import accounts

        signals.user_logged_in.connect(accounts.on_signed_in, dispatch_uid="histopath-signed-in")
        signals.user_logged_out.connect(accounts.on_signed_out, dispatch_uid="histopath-signed-out")
        signals.user_login_failed.connect(accounts.on_sign_in_failed, dispatch_uid="histopath-sign-in-failed")
        post_migrate.connect(accounts.ensure_roles, sender=self, dispatch_uid="histopath-roles")
