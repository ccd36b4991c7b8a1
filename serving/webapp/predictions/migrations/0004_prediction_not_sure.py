"""A prediction records whether the model was "not sure" and its uncertainty."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("predictions", "0003_sign_in_throttle"),
    ]

    operations = [
        migrations.AddField(model_name="prediction", name="not_sure", field=models.BooleanField(default=False)),
        migrations.AddField(model_name="prediction", name="uncertainty", field=models.FloatField(null=True)),
    ]
