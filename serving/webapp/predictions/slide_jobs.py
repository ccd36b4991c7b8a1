"""Slide jobs: a queue in the database, run by worker threads of any web process.

Every state lives in `SlideJob` rows, so any gunicorn/uvicorn worker answers the page's
polls, and a job survives the worker that queued it:

- `claim_next` takes the oldest queued job with one conditional UPDATE (`state='queued'`
  in the WHERE clause): of several processes only one gets it;
- `run` calls the slide with `evaluation.slide_predict.predict_slide` (the one tiler and
  slide answer of `histopath predict`) through the web app's backend (the embedded model,
  or a TF Serving endpoint, a batch of tiles per request), writing progress and a
  heartbeat after each batch, then the answer or the reason;
- `requeue_stale` queues again a running job whose worker stopped reporting (a killed
  process), so it is not lost;
- `start_workers` runs `HISTOPATH_SLIDE_WORKERS` threads per process (started by
  gunicorn's `post_worker_init`); `histopath webapp slide_worker` runs the same loop alone.
"""

from __future__ import annotations

import datetime
import logging
import os
import pathlib
import socket
import threading
import time
from typing import Optional

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from histopath.serving.webapp.predictions import accounts, slide_store, slide_viewer
from histopath.serving.webapp.predictions.models import AuditEvent, SlideJob

logger = logging.getLogger(__name__)
POLL_S = 1.0  # how often an idle worker looks for a queued job
BATCH_SIZE = 64  # tiles per model call
PROGRESS_EVERY_S = 0.5  # least time between two progress writes
SWEEP_EVERY_S = 600.0  # how often a worker deletes what uploads cut short left behind
GENERIC_FAILURE = "The slide could not be called; the administrator can see why in the server log."


def worker_id() -> str:
    """This thread's name in the queue: host, process and thread."""
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{threading.get_ident() % 100000}"


def requeue_stale() -> int:
    """Queues again running jobs whose worker has not reported for
    `HISTOPATH_SLIDE_STALE_MINUTES`; returns how many."""
    since = timezone.now() - datetime.timedelta(minutes=settings.HISTOPATH_SLIDE_STALE_MINUTES)
    count = SlideJob.objects.filter(state=SlideJob.RUNNING, heartbeat_at__lt=since).update(
        state=SlideJob.QUEUED, worker="", tiles_done=0)
    if count:
        logger.warning("slide jobs: %d job(s) of a silent worker queued again", count)
    return count


def claim_next(worker: str) -> Optional[SlideJob]:
    """The oldest queued job, now running under `worker`; None when the queue is empty or
    another process claimed each candidate first."""
    for pk in SlideJob.objects.filter(state=SlideJob.QUEUED).order_by("created_at", "id").values_list("pk", flat=True)[:5]:
        now = timezone.now()
        claimed = SlideJob.objects.filter(pk=pk, state=SlideJob.QUEUED).update(
            state=SlideJob.RUNNING, worker=worker, started_at=now, heartbeat_at=now, tiles_done=0)
        if claimed:
            return SlideJob.objects.get(pk=pk)
    return None


def _still_mine(job: SlideJob, **fields) -> bool:
    """Writes `fields` (and the heartbeat) while `job` is still this worker's; False once
    it is not (queued again by `requeue_stale` and taken by another)."""
    return bool(SlideJob.objects.filter(pk=job.pk, state=SlideJob.RUNNING, worker=job.worker).update(
        heartbeat_at=timezone.now(), **fields))


class _Progress:
    """Writes (done, total) to the job's row, at most every `PROGRESS_EVERY_S`."""

    def __init__(self, job: SlideJob):
        self.job = job
        self.written = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.written < PROGRESS_EVERY_S:
            return
        self.written = now
        if not _still_mine(self.job, tiles_done=done, tiles_total=total):
            raise _Taken()


class _Taken(Exception):
    """The job was given to another worker while this one ran it."""


def _answer_fields(answer: dict) -> dict:
    """The job's result columns from `predict_slide`'s answer (its "not sure" included)."""
    return {"probability": answer.get("probability"), "label": answer["label"], "label_name": answer["label_name"],
            "uncertainty": answer.get("uncertainty"), "not_sure": bool(answer.get("not_sure")),
            "tiles_called": answer["tiles_called"], "model_name": str(answer.get("model_name", ""))[:200],
            "model_version": str(answer.get("model_version", ""))[:32], "width": answer["width"],
            "height": answer["height"], "slide_mpp": answer["mpp"],
            "output_dir": str(pathlib.Path(answer["outputs"]["slide.json"]).parent)}


def _call_slide(job: SlideJob) -> dict:
    """`predict_slide` on the job's slide with the backend's model, every tile by one model
    version: when that version stops being served mid-slide (a newer one was pushed), the
    slide is called again, once, by the newest."""
    from histopath.evaluation import slide_predict
    from histopath.serving.webapp.predictions.backends import VersionReplaced, get_backend

    def call(fresh: bool) -> dict:
        model = get_backend().tile_model(fresh=fresh)
        scale = slide_predict.model_scale(model.model_info, settings.HISTOPATH_SLIDE_MODEL_MPP,
                                          settings.HISTOPATH_SLIDE_TILE_PX)
        output = pathlib.Path(settings.HISTOPATH_SLIDE_DIR) / "results" / str(job.pk)
        return slide_predict.predict_slide(model, job.slide_path, str(output), mpp=job.mpp, scale=scale,
                                           batch_size=BATCH_SIZE, progress=_Progress(job))

    try:
        return call(fresh=False)
    except VersionReplaced as replaced:
        logger.warning("slide job %d: %s; calling the slide again with the newest version", job.pk, replaced)
    return call(fresh=True)


def run(job: SlideJob) -> SlideJob:
    """Calls the slide of a claimed job and records the answer or why it failed.

    Returns:
      The job as recorded at the end.
    """
    from histopath.errors import ConfigError, DataError
    from histopath.serving.webapp.predictions.backends import BackendError

    try:
        fields = _answer_fields(_call_slide(job))
        slide_viewer.write_overlay(fields["output_dir"])
    except _Taken:
        logger.warning("slide job %d: taken over by another worker", job.pk)
        return SlideJob.objects.get(pk=job.pk)
    except (DataError, ConfigError, BackendError) as error:
        logger.warning("slide job %d failed: %s", job.pk, error)
        message = str(error).replace(job.slide_path, f"“{job.display_name}”")
        if isinstance(error, BackendError):
            message = "The model is not available right now. Queue the slide again in a minute."
        _still_mine(job, state=SlideJob.FAILED, error=message[:500], finished_at=timezone.now())
        return SlideJob.objects.get(pk=job.pk)
    except Exception:
        logger.exception("slide job %d failed", job.pk)
        _still_mine(job, state=SlideJob.FAILED, error=GENERIC_FAILURE, finished_at=timezone.now())
        return SlideJob.objects.get(pk=job.pk)
    if _still_mine(job, state=SlideJob.DONE, finished_at=timezone.now(), **fields):
        said = f"not sure (leaning {fields['label_name']})" if fields.get("not_sure") else fields["label_name"]
        accounts.record(AuditEvent.SLIDE_PREDICTION, job.user.get_username(), None, job.user,
                        detail=f"slide job {job.pk}: {said}, {fields['tiles_called']} tiles")
    return SlideJob.objects.get(pk=job.pk)


def run_next(worker: Optional[str] = None) -> Optional[SlideJob]:
    """Claims and runs one queued job (None when there is none)."""
    requeue_stale()
    job = claim_next(worker or worker_id())
    return run(job) if job is not None else None


def work_forever(stop: threading.Event, poll_s: float = POLL_S) -> None:
    """Runs queued jobs until `stop` is set (a worker thread's or the command's loop); sweeps
    the uploads cut short from `incoming/` every `SWEEP_EVERY_S`."""
    swept = 0.0
    while not stop.is_set():
        try:
            if time.monotonic() - swept > SWEEP_EVERY_S:
                swept = time.monotonic()
                slide_store.sweep_incoming()
            ran = run_next()
        except Exception:  # the database was away: try again later, never die
            logger.exception("slide worker: cannot read the queue")
            ran = None
        finally:
            close_old_connections()
        if ran is None:
            stop.wait(poll_s)


_threads: list[threading.Thread] = []
_stop = threading.Event()
_threads_lock = threading.Lock()


def start_workers(count: Optional[int] = None) -> int:
    """Starts this process's slide worker threads once (daemon threads); returns how many run."""
    count = settings.HISTOPATH_SLIDE_WORKERS if count is None else count
    with _threads_lock:
        while len(_threads) < count:
            thread = threading.Thread(target=work_forever, args=(_stop,), name=f"slide-worker-{len(_threads)}",
                                      daemon=True)
            thread.start()
            _threads.append(thread)
        return len(_threads)
