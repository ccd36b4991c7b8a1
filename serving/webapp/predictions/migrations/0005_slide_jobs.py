"""Whole-slide jobs (the queue the web workers share) and their audit kinds."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('predictions', '0004_prediction_not_sure'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name='auditevent',
            name='kind',
            field=models.CharField(choices=[('sign_in', 'Signed in'), ('sign_in_failed', 'Sign-in failed'), ('locked_out', 'Locked out'), ('sign_out', 'Signed out'), ('prediction', 'Prediction'), ('slide_queued', 'Slide queued'), ('slide_prediction', 'Slide prediction')], db_index=True, max_length=16),
        ),
        migrations.CreateModel(
            name='SlideJob',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('created_at', models.DateTimeField(auto_now_add=True, db_index=True)),
                ('started_at', models.DateTimeField(null=True)),
                ('finished_at', models.DateTimeField(null=True)),
                ('source', models.CharField(choices=[('upload', 'Upload'), ('folder', 'Slide folder')], max_length=8)),
                ('slide_path', models.CharField(max_length=1024)),
                ('slide_sha256', models.CharField(blank=True, max_length=64)),
                ('display_name', models.CharField(max_length=120)),
                ('mpp', models.FloatField(null=True)),
                ('state', models.CharField(choices=[('queued', 'Queued'), ('running', 'Running'), ('done', 'Done'), ('failed', 'Failed')], db_index=True, default='queued', max_length=8)),
                ('worker', models.CharField(blank=True, max_length=64)),
                ('heartbeat_at', models.DateTimeField(null=True)),
                ('tiles_done', models.PositiveIntegerField(default=0)),
                ('tiles_total', models.PositiveIntegerField(null=True)),
                ('error', models.CharField(blank=True, max_length=500)),
                ('output_dir', models.CharField(blank=True, max_length=1024)),
                ('width', models.PositiveIntegerField(null=True)),
                ('height', models.PositiveIntegerField(null=True)),
                ('slide_mpp', models.FloatField(null=True)),
                ('probability', models.FloatField(null=True)),
                ('label', models.PositiveSmallIntegerField(null=True)),
                ('label_name', models.CharField(blank=True, max_length=32)),
                ('not_sure', models.BooleanField(default=False)),
                ('uncertainty', models.FloatField(null=True)),
                ('tiles_called', models.PositiveIntegerField(null=True)),
                ('model_name', models.CharField(blank=True, max_length=200)),
                ('model_version', models.CharField(blank=True, max_length=32)),
                ('user', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='slide_jobs', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'ordering': ['-created_at', '-id'],
            },
        ),
    ]
