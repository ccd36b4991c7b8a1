"""Predictions get their user, a display name instead of the file name or URL, and the
tissue fields; the audit trail is added.

Rows recorded before have no user; their `source_name` (which could hold a URL with its
query string) is dropped, and their display name is the start of the image hash.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models
from django.db.models.functions import Substr


def name_by_hash(apps, schema_editor):
    Prediction = apps.get_model("predictions", "Prediction")
    Prediction.objects.update(display_name=Substr("image_sha256", 1, 12))


class Migration(migrations.Migration):

    dependencies = [
        ("predictions", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="prediction",
            name="user",
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT,
                                    related_name="predictions", to=settings.AUTH_USER_MODEL),
        ),
        migrations.AddField(model_name="prediction", name="display_name",
                            field=models.CharField(default="", max_length=120), preserve_default=False),
        migrations.AddField(model_name="prediction", name="original_name",
                            field=models.CharField(blank=True, max_length=255)),
        migrations.AddField(model_name="prediction", name="tissue_detected",
                            field=models.BooleanField(default=True)),
        migrations.AddField(model_name="prediction", name="tissue_fraction",
                            field=models.FloatField(null=True)),
        migrations.AlterField(model_name="prediction", name="label",
                              field=models.PositiveSmallIntegerField(null=True)),
        migrations.RunPython(name_by_hash, migrations.RunPython.noop),
        migrations.RemoveField(model_name="prediction", name="source_name"),
        migrations.AlterModelOptions(
            name="prediction",
            options={"ordering": ["-created_at", "-id"],
                     "permissions": [("view_all_predictions", "Can see every user's predictions")]},
        ),
        migrations.CreateModel(
            name="AuditEvent",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("created_at", models.DateTimeField(auto_now_add=True, db_index=True)),
                ("kind", models.CharField(choices=[("sign_in", "Signed in"), ("sign_in_failed", "Sign-in failed"),
                                                   ("locked_out", "Locked out"), ("sign_out", "Signed out"),
                                                   ("prediction", "Prediction")], db_index=True, max_length=16)),
                ("username", models.CharField(db_index=True, max_length=150)),
                ("client_ip", models.GenericIPAddressField(null=True)),
                ("detail", models.CharField(blank=True, max_length=300)),
                ("user", models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT,
                                           related_name="audit_events", to=settings.AUTH_USER_MODEL)),
            ],
            options={"ordering": ["-created_at", "-id"]},
        ),
    ]
