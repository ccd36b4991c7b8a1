"""The atomic per-user-name count of failed sign-ins (the lock-out holds under parallel guesses)."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("predictions", "0002_users_audit_no_urls"),
    ]

    operations = [
        migrations.CreateModel(
            name="SignInThrottle",
            fields=[
                ("username", models.CharField(max_length=150, primary_key=True, serialize=False)),
                ("failures", models.PositiveIntegerField(default=0)),
                ("window_started", models.DateTimeField()),
                ("locked_at", models.DateTimeField(null=True)),
            ],
        ),
    ]
