"""`histopath webapp slide_worker`: runs queued slide jobs in a process of its own.

The web workers run slide jobs in threads of their own (`HISTOPATH_SLIDE_WORKERS`); set
that to 0 and run this command (one or more) to keep slide work out of the web processes.
Jobs are claimed from the database, so any number of these and of web workers share them.
"""

import signal
import threading

from django.core.management.base import BaseCommand

from histopath.serving.webapp.predictions import slide_jobs


class Command(BaseCommand):
    help = "Runs queued whole-slide jobs until interrupted (or once with --once)."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="run at most one queued job, then exit")

    def handle(self, *args, once: bool, **options):
        if once:
            job = slide_jobs.run_next()
            self.stdout.write("no queued slide job" if job is None else f"slide job {job.pk}: {job.state}")
            return
        stop = threading.Event()
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, lambda *_: stop.set())
        self.stdout.write("slide worker: waiting for queued slide jobs (Ctrl+C to stop)")
        slide_jobs.work_forever(stop)
