"""`histopath webapp adduser NAME --role pathologist`: creates or updates a user.

The password comes from `--password-env VARIABLE` (for scripts and Kubernetes Secrets) or
is asked for twice on the terminal.
"""

import getpass
import os

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from histopath.serving.webapp.predictions.accounts import ROLES, create_user


class Command(BaseCommand):
    help = "Creates or updates a web-app user with one role (pathologist, auditor or admin)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--role", choices=ROLES, required=True,
                            help="pathologist: classifies, sees own history; auditor: sees every "
                                 "prediction and the audit trail; admin: manages users")
        parser.add_argument("--email", default="")
        parser.add_argument("--password-env", metavar="VARIABLE",
                            help="read the password from this environment variable")

    def handle(self, *args, username, role, email, password_env, **options):
        if password_env:
            password = os.environ.get(password_env)
            if not password:
                raise CommandError(f"the environment variable {password_env} is not set or empty")
        else:
            password = getpass.getpass(f"Password for {username}: ")
            if password != getpass.getpass("Again: "):
                raise CommandError("the passwords differ")
        try:
            create_user(username, password, role, email)
        except ValidationError as error:
            raise CommandError(f"password refused: {' '.join(error.messages)}") from None
        self.stdout.write(f"user {username} ({role}) is ready")
