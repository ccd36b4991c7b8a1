"""Users, roles, lock-outs and the audit trail of sign-ins, on Django's own authentication.

Roles are groups, created after every `migrate`:
  - *pathologist*: classifies images and sees their own predictions;
  - *auditor*: sees every user's predictions and the audit trail (read-only Django admin).
Administrators are Django superusers: the admin site for users and groups.

A user name with `HISTOPATH_LOCKOUT_FAILURES` failed sign-ins within
`HISTOPATH_LOCKOUT_MINUTES` (and no success since) is locked for that long: even the right
password is refused, on the sign-in page and the admin's. The count is kept in the
database (`SignInThrottle`) and each attempt reserves its place in it with one atomic
UPDATE before its password is checked, so parallel guesses cannot overtake the limit.
"""

from __future__ import annotations

import contextvars
import datetime
import logging

from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from histopath.serving.webapp.predictions.models import AuditEvent, SignInThrottle

logger = logging.getLogger("histopath.audit")

PATHOLOGIST, AUDITOR = "pathologist", "auditor"
ROLE_PERMISSIONS = {
    PATHOLOGIST: ["add_prediction", "view_prediction"],
    AUDITOR: ["view_prediction", "view_all_predictions", "view_auditevent"],
}
ROLES = (PATHOLOGIST, AUDITOR, "admin")
# The user name the lock-out backend just refused (Django then reports a failed sign-in).
_refused: contextvars.ContextVar[str | None] = contextvars.ContextVar("histopath_refused", default=None)


def client_ip(request) -> str | None:
    """The client's address: REMOTE_ADDR (behind a proxy, the proxy must set it right)."""
    if request is None:
        return None
    return request.META.get("REMOTE_ADDR") or None


def record(kind: str, username: str, request=None, user=None, detail: str = "") -> AuditEvent:
    """Appends one audit event and logs it."""
    event = AuditEvent.objects.create(kind=kind, username=username[:150], user=user,
                                      client_ip=client_ip(request), detail=detail[:300])
    logger.info("audit %s user=%s ip=%s %s", kind, username, event.client_ip, detail)
    return event


def _window() -> datetime.timedelta:
    return datetime.timedelta(minutes=settings.HISTOPATH_LOCKOUT_MINUTES)


def _over(now: datetime.datetime) -> Q:
    """Throttle rows whose window (or lock) has run out at `now`."""
    since = now - _window()
    return Q(locked_at__isnull=True, window_started__lt=since) | Q(locked_at__lt=since)


def reserve_attempt(username: str) -> bool:
    """Reserves one password check for `username`, atomically in the database.

    One conditional UPDATE (`failures = failures + 1 WHERE failures < limit`) decides:
    parallel attempts cannot all pass a count that is still below the limit, so at most
    `HISTOPATH_LOCKOUT_FAILURES` passwords are checked per window.

    Returns:
      False when the user name is locked (no password may be checked).
    """
    name, now = username[:150], timezone.now()
    limit = settings.HISTOPATH_LOCKOUT_FAILURES
    rows = SignInThrottle.objects.filter(username=name)
    rows.filter(_over(now)).update(failures=0, window_started=now, locked_at=None)
    if rows.filter(failures__lt=limit).update(failures=F("failures") + 1):
        return True
    try:
        with transaction.atomic():
            SignInThrottle.objects.create(username=name, failures=1, window_started=now)
        return True
    except IntegrityError:  # the row exists (created meanwhile, or at the limit)
        return bool(rows.filter(failures__lt=limit).update(failures=F("failures") + 1))


def is_locked(username: str) -> bool:
    """Whether `username` is locked out now (its failures, and checks in flight, reached
    the limit within the window)."""
    if not username:
        return False
    rows = SignInThrottle.objects.filter(username=username[:150],
                                         failures__gte=settings.HISTOPATH_LOCKOUT_FAILURES)
    return rows.exclude(_over(timezone.now())).exists()


def lockout_message() -> str:
    minutes = settings.HISTOPATH_LOCKOUT_MINUTES
    return (f"This account is locked for {minutes:g} minutes after {settings.HISTOPATH_LOCKOUT_FAILURES} "
            "failed sign-ins. Try again later or ask an administrator.")


class LockoutModelBackend(ModelBackend):
    """Django's `ModelBackend` that refuses a locked-out user name before checking the password."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        name = username if username is not None else kwargs.get(get_user_model().USERNAME_FIELD)
        if name and not reserve_attempt(str(name)):
            record(AuditEvent.LOCKED_OUT, str(name), request, detail="sign-in refused: account locked")
            _refused.set(str(name))  # Django reports it as a failed sign-in: not one more failure
            raise PermissionDenied(lockout_message())  # no other backend is asked
        return super().authenticate(request, username=username, password=password, **kwargs)


class SignInForm(AuthenticationForm):
    """The sign-in form: says so when the account is locked."""

    def clean(self):
        username = self.cleaned_data.get("username")
        if username and is_locked(username):
            record(AuditEvent.LOCKED_OUT, username, self.request, detail="sign-in refused: account locked")
            raise forms.ValidationError(lockout_message(), code="locked")
        return super().clean()


def on_signed_in(sender, request, user, **kwargs) -> None:
    """`user_logged_in` receiver: records the sign-in and clears the failure count."""
    record(AuditEvent.SIGN_IN, user.get_username(), request, user)
    SignInThrottle.objects.filter(username=user.get_username()[:150]).update(
        failures=0, window_started=timezone.now(), locked_at=None)


def on_signed_out(sender, request, user, **kwargs) -> None:
    """`user_logged_out` receiver."""
    if user is not None:
        record(AuditEvent.SIGN_OUT, user.get_username(), request, user)


def on_sign_in_failed(sender, credentials, request=None, **kwargs) -> None:
    """`user_login_failed` receiver: records the failure (its attempt was counted when it
    was reserved), and the lock-out it causes, once."""
    username = str(credentials.get("username") or "")
    if not username:
        return
    if _refused.get() == username:  # locked: the refusal is recorded by whoever refused
        _refused.set(None)
        return
    record(AuditEvent.SIGN_IN_FAILED, username, request, detail="wrong user name or password")
    locking = SignInThrottle.objects.filter(username=username[:150], locked_at__isnull=True,
                                            failures__gte=settings.HISTOPATH_LOCKOUT_FAILURES)
    if locking.update(locked_at=timezone.now()):
        record(AuditEvent.LOCKED_OUT, username, request,
               detail=f"locked for {settings.HISTOPATH_LOCKOUT_MINUTES:g} minutes")


def ensure_roles(**kwargs) -> None:
    """`post_migrate` receiver: the role groups exist with their permissions."""
    for role, codenames in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role)
        permissions = Permission.objects.filter(content_type__app_label="predictions", codename__in=codenames)
        if permissions.count() == len(codenames):
            group.permissions.set(permissions)


def create_user(username: str, password: str, role: str, email: str = ""):
    """Creates (or updates) a user with one role.

    Args:
      username: the sign-in name.
      password: the password (validated by Django's password validators).
      role: "pathologist", "auditor" or "admin" (a superuser).
      email: optional e-mail address.

    Raises:
      ValueError: unknown role.
      django.core.exceptions.ValidationError: a password the validators refuse.
    """
    from django.contrib.auth.password_validation import validate_password

    if role not in ROLES:
        raise ValueError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
    ensure_roles()
    user_model = get_user_model()
    user = user_model.objects.filter(username=username).first() or user_model(username=username)
    validate_password(password, user)
    user.email = email or user.email
    user.set_password(password)
    user.is_staff = role in (AUDITOR, "admin")
    user.is_superuser = role == "admin"
    user.save()
    user.groups.set([] if role == "admin" else [Group.objects.get(name=role)])
    return user
