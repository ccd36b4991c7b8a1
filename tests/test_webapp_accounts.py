"""Sign-in, roles, lock-outs and the audit trail of the web app (issue 21).

Django runs in this process (embedded MIL backend, temporary SQLite); users are created
with the project's own `accounts.create_user`, and the management entry point and the HTTPS
settings are tried in subprocesses, as an operator runs them.
"""

from __future__ import annotations

import io
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
from PIL import Image
from serving_fixtures import TEST_PASSWORD, webapp_user


def _png() -> bytes:
    rng_pixels = Image.effect_noise((64, 64), 60).convert("RGB")
    tinted = Image.merge("RGB", [band.point(lambda v, k=k: int(v * k)) for band, k in
                                 zip(rng_pixels.split(), (0.9, 0.5, 0.8))])
    buffer = io.BytesIO()
    tinted.save(buffer, format="PNG")
    return buffer.getvalue()


def _upload(name: str, data: bytes):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data, content_type="image/png")


@pytest.fixture()
def fresh(django_app):
    """No predictions or audit events from earlier tests."""
    from histopath.serving.webapp.predictions.models import AuditEvent, Prediction, SignInThrottle

    Prediction.objects.all().delete()
    AuditEvent.objects.all().delete()
    SignInThrottle.objects.all().delete()


def _signed_in(username: str, role: str):
    from django.test import Client

    webapp_user(username, role)
    client = Client()
    response = client.post("/accounts/login/", {"username": username, "password": TEST_PASSWORD})
    assert response.status_code == 302, response.content.decode()[-2000:]
    return client


@pytest.mark.parametrize("method, url", [("GET", "/"), ("POST", "/"), ("GET", "/history/"), ("GET", "/admin/")])
def test_every_page_but_healthz_needs_a_signed_in_user(fresh, method, url):
    from django.test import Client

    from histopath.serving.webapp.predictions.models import Prediction

    client = Client()
    data = {"image": _upload("a.png", _png())} if method == "POST" else None
    response = client.generic(method, url) if data is None else client.post(url, data)
    assert response.status_code == 302
    assert "/login/" in response["Location"]
    assert not Prediction.objects.exists()
    assert client.get("/healthz").status_code == 200
    assert client.get("/accounts/login/").status_code == 200


def test_sign_in_and_out_are_audited(fresh):
    from histopath.serving.webapp.predictions.models import AuditEvent

    client = _signed_in("pat-audit", "pathologist")
    assert client.get("/").status_code == 200
    client.post("/accounts/logout/")
    assert client.get("/").status_code == 302
    kinds = list(AuditEvent.objects.filter(username="pat-audit").order_by("id").values_list("kind", flat=True))
    assert kinds == [AuditEvent.SIGN_IN, AuditEvent.SIGN_OUT]


def test_repeated_failures_lock_the_account_even_for_the_right_password(fresh):
    from django.conf import settings
    from django.test import Client

    from histopath.serving.webapp.predictions.models import AuditEvent

    webapp_user("pat-locked", "pathologist")
    client = Client()
    for _ in range(settings.HISTOPATH_LOCKOUT_FAILURES):
        response = client.post("/accounts/login/", {"username": "pat-locked", "password": "wrong-password"})
        assert response.status_code == 200 and "correct username and password" in response.content.decode()
    response = client.post("/accounts/login/", {"username": "pat-locked", "password": TEST_PASSWORD})
    assert response.status_code == 200
    assert "This account is locked" in response.content.decode()
    assert client.get("/").status_code == 302  # still signed out
    admin_login = client.post("/admin/login/", {"username": "pat-locked", "password": TEST_PASSWORD})
    assert "_auth_user_id" not in client.session and admin_login.status_code == 200
    events = AuditEvent.objects.filter(username="pat-locked")
    assert events.filter(kind=AuditEvent.SIGN_IN_FAILED).count() == settings.HISTOPATH_LOCKOUT_FAILURES
    locked = events.filter(kind=AuditEvent.LOCKED_OUT)
    assert locked.filter(detail__startswith="locked for").count() == 1  # the lock, at the last failure
    assert locked.filter(detail__startswith="sign-in refused").count() == 2  # each refusal after it
    assert not events.filter(kind=AuditEvent.SIGN_IN).exists()


def test_pathologists_see_their_own_predictions_and_auditors_see_all(fresh):
    from histopath.serving.webapp.predictions.models import AuditEvent, Prediction

    first, second = _signed_in("pat-first", "pathologist"), _signed_in("pat-second", "pathologist")
    assert first.post("/", {"image": _upload("a.png", _png()), "display_name": "case-first"}).status_code == 200
    assert second.post("/", {"image": _upload("b.png", _png()), "display_name": "case-second"}).status_code == 200
    assert {(p.user.username, p.display_name) for p in Prediction.objects.all()} == {
        ("pat-first", "case-first"), ("pat-second", "case-second")}
    assert AuditEvent.objects.filter(kind=AuditEvent.PREDICTION).count() == 2

    first_history = first.get("/history/").content.decode()
    assert "case-first" in first_history and "case-second" not in first_history
    auditor = _signed_in("aud-one", "auditor")
    all_history = auditor.get("/history/").content.decode()
    assert "case-first" in all_history and "case-second" in all_history
    assert "pat-first" in all_history and "pat-second" in all_history
    assert auditor.get("/").status_code == 403  # auditors do not classify


def test_admin_shows_records_read_only_and_users_to_administrators_only(fresh):
    from histopath.serving.webapp.predictions.models import Prediction

    pathologist = _signed_in("pat-admin-check", "pathologist")
    pathologist.post("/", {"image": _upload("a.png", _png())})
    record = Prediction.objects.get()
    auditor = _signed_in("aud-admin-check", "auditor")
    assert auditor.get("/admin/predictions/prediction/").status_code == 200
    assert auditor.get("/admin/predictions/auditevent/").status_code == 200
    change_page = auditor.get(f"/admin/predictions/prediction/{record.pk}/change/").content.decode()
    assert 'name="_save"' not in change_page  # a view, not a form
    assert auditor.get(f"/admin/predictions/prediction/{record.pk}/delete/").status_code == 403
    assert auditor.get("/admin/auth/user/").status_code == 403
    assert pathologist.get("/admin/").status_code == 302  # not staff: sent to the admin's sign-in
    administrator = _signed_in("admin-check", "admin")
    assert administrator.get("/admin/auth/user/").status_code == 200
    assert administrator.get(f"/admin/predictions/prediction/{record.pk}/delete/").status_code == 403


def test_records_are_append_only(fresh):
    from histopath.serving.webapp.predictions.models import AppendOnlyError, AuditEvent

    event = AuditEvent.objects.create(kind=AuditEvent.SIGN_IN, username="someone")
    event.detail = "rewritten"
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.delete()


def _histopath(args: list[str], env: dict[str, str], cwd: pathlib.Path) -> subprocess.CompletedProcess:
    script = pathlib.Path(sys.executable).parent / "histopath"
    return subprocess.run([str(script), *args], env={**os.environ, **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_operator_creates_users_without_manage_py(tmp_path):
    """`histopath webapp createsuperuser --noinput` and `adduser`, as in the README."""
    env = {"SECRET_KEY": "operator-test-secret-key", "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
           "DJANGO_SUPERUSER_USERNAME": "root-admin", "DJANGO_SUPERUSER_PASSWORD": TEST_PASSWORD,
           "DJANGO_SUPERUSER_EMAIL": "admin@example.org", "NEW_PASSWORD": TEST_PASSWORD, "DEBUG": "0"}
    created = _histopath(["webapp", "createsuperuser", "--noinput"], env, tmp_path)
    assert created.returncode == 0, created.stderr
    added = _histopath(["webapp", "adduser", "jdoe", "--role", "pathologist", "--password-env", "NEW_PASSWORD"],
                       env, tmp_path)
    assert added.returncode == 0 and "jdoe (pathologist) is ready" in added.stdout, added.stderr
    weak = _histopath(["webapp", "adduser", "weak", "--role", "auditor", "--password-env", "WEAK"],
                      {**env, "WEAK": "short"}, tmp_path)
    assert weak.returncode != 0 and "password refused" in weak.stderr
    check = _histopath(["webapp", "shell", "-c", textwrap.dedent("""
        from django.contrib.auth import get_user_model
        users = get_user_model().objects.order_by("username")
        print(sorted((u.username, u.is_superuser, [g.name for g in u.groups.all()]) for u in users))
        """)], env, tmp_path)
    assert "[('jdoe', False, ['pathologist']), ('root-admin', True, [])]" in check.stdout, check.stderr
    missing_key = _histopath(["webapp", "createsuperuser", "--noinput"], {**env, "SECRET_KEY": ""}, tmp_path)
    assert missing_key.returncode != 0 and "SECRET_KEY" in missing_key.stderr


def test_behind_https_cookies_are_secure_and_hsts_is_on(tmp_path):
    """The settings an Ingress deployment gets (`BEHIND_HTTPS_PROXY=1`), in a fresh process."""
    script = textwrap.dedent("""
        import django
        from django.core.management import call_command
        from django.test import Client
        django.setup()
        call_command("migrate", verbosity=0)
        proxied = {"HTTP_X_FORWARDED_PROTO": "https"}
        client = Client()
        login = client.get("/accounts/login/", **proxied)
        plain = client.get("/accounts/login/")
        health = client.get("/healthz")
        print("status", login.status_code, plain.status_code, health.status_code)
        print("location", plain["Location"])
        print("hsts", login.get("Strict-Transport-Security"))
        print("cookie", login.cookies["csrftoken"]["secure"], login.cookies["csrftoken"]["httponly"])
    """)
    env = {"SECRET_KEY": "https-test-secret-key", "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
           "DJANGO_SETTINGS_MODULE": "histopath.serving.webapp.settings", "BEHIND_HTTPS_PROXY": "1",
           "ALLOWED_HOSTS": "testserver", "DEBUG": "0"}
    result = subprocess.run([sys.executable, "-c", script], env={**os.environ, **env}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert lines["status"] == "200 301 200"  # http is redirected, the probe is not
    assert lines["location"].startswith("https://testserver/accounts/login/")
    assert lines["hsts"].startswith("max-age=31536000")
    assert lines["cookie"].startswith("True")
