"""What the web app records: every prediction with its user, and an append-only audit trail.

No URL, query string or credential is ever stored: a prediction keeps the SHA-256 of the
image bytes and a display name the user chose (or the start of that hash); an upload's
original file name only when `HISTOPATH_KEEP_FILENAMES` is on.
"""

from django.conf import settings
from django.db import models


class AppendOnlyError(Exception):
    """A recorded row was to be changed or deleted."""


class AppendOnlyModel(models.Model):
    """A model whose rows are written once: saving an existing row or deleting raises."""

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError(f"{type(self).__name__} {self.pk} is recorded and cannot be changed")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError(f"{type(self).__name__} {self.pk} is recorded and cannot be deleted")


class Prediction(AppendOnlyModel):
    """One answered prediction.

    Attributes:
      created_at: when the prediction was made.
      user: who asked for it.
      image_sha256: SHA-256 of the image bytes exactly as received (upload or URL body).
      source: "upload" or "url".
      display_name: the name the user gave, else the first 12 hex digits of the hash.
      original_name: the uploaded file's name, only with `HISTOPATH_KEEP_FILENAMES=1`.
      model_name, model_version: the model that answered.
      tissue_detected: False when the image shows no tissue: then there is no class.
      tissue_fraction: the share of tissue pixels the model saw.
      probability: the model's probability of malignant (shown only with tissue).
      label: 0 benign, 1 malignant; None without tissue.
      label_name: "benign", "malignant" or "no tissue detected".
      not_sure: the model was not sure ("needs a pathologist's review"); `label` is then
        only its leaning.
      uncertainty: 1 at the model's threshold, 0 at probability 0 or 1 (None: a model
        without it).
    """

    SOURCE_UPLOAD = "upload"
    SOURCE_URL = "url"
    SOURCES = [(SOURCE_UPLOAD, "Upload"), (SOURCE_URL, "URL")]

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True,
                             related_name="predictions")
    image_sha256 = models.CharField(max_length=64, db_index=True)
    source = models.CharField(max_length=8, choices=SOURCES)
    display_name = models.CharField(max_length=120)
    original_name = models.CharField(max_length=255, blank=True)
    model_name = models.CharField(max_length=200)
    model_version = models.CharField(max_length=32)
    tissue_detected = models.BooleanField(default=True)
    tissue_fraction = models.FloatField(null=True)
    probability = models.FloatField()
    label = models.PositiveSmallIntegerField(null=True)
    label_name = models.CharField(max_length=32)
    not_sure = models.BooleanField(default=False)
    uncertainty = models.FloatField(null=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("view_all_predictions", "Can see every user's predictions")]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.display_name}: {self.label_name}"


class AuditEvent(AppendOnlyModel):
    """One line of the audit trail (sign-ins, failures, lock-outs, sign-outs, predictions).

    Attributes:
      created_at: when it happened.
      kind: what happened (one of `KINDS`).
      username: the user name given (also for failed sign-ins of unknown names).
      user: the account, when there is one.
      client_ip: the address the request came from.
      detail: a short description (never a password, URL or file name).
    """

    SIGN_IN = "sign_in"
    SIGN_IN_FAILED = "sign_in_failed"
    LOCKED_OUT = "locked_out"
    SIGN_OUT = "sign_out"
    PREDICTION = "prediction"
    SLIDE_QUEUED = "slide_queued"
    SLIDE_PREDICTION = "slide_prediction"
    KINDS = [(SIGN_IN, "Signed in"), (SIGN_IN_FAILED, "Sign-in failed"), (LOCKED_OUT, "Locked out"),
             (SIGN_OUT, "Signed out"), (PREDICTION, "Prediction"), (SLIDE_QUEUED, "Slide queued"),
             (SLIDE_PREDICTION, "Slide prediction")]

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    kind = models.CharField(max_length=16, choices=KINDS, db_index=True)
    username = models.CharField(max_length=150, db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True,
                             related_name="audit_events")
    client_ip = models.GenericIPAddressField(null=True)
    detail = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.username}: {self.get_kind_display()}"


class SignInThrottle(models.Model):
    """The failed sign-ins of one user name, counted atomically in the database.

    Every sign-in reserves one attempt with a single conditional UPDATE (`failures + 1
    WHERE failures < limit`) BEFORE its password is checked, so parallel guesses cannot
    all read a count that is still below the limit: at most the limit of passwords is
    checked per window. A success clears the count; a failure keeps its reservation.

    Attributes:
      username: the user name given (also unknown ones).
      failures: attempts reserved in the window (failed, or being checked now).
      window_started: when the first of them was reserved.
      locked_at: when the limit was reached by a failure (the lock runs from then).
    """

    username = models.CharField(max_length=150, primary_key=True)
    failures = models.PositiveIntegerField(default=0)
    window_started = models.DateTimeField()
    locked_at = models.DateTimeField(null=True)

    def __str__(self) -> str:
        return f"{self.username}: {self.failures} failure(s)"


class SlideJob(models.Model):
    """One whole slide to call, and its state: the queue every web worker reads.

    A job is written `queued`; a worker claims it with one conditional UPDATE (`queued` ->
    `running`, its own id), so two processes never run one job; it records its progress
    (`tiles_done` of `tiles_total`) and a heartbeat as it goes, then the answer (`done`)
    or the reason (`failed`). Any process answers the page's polls from these rows.

    Attributes:
      created_at, started_at, finished_at: when it was queued, claimed, ended.
      user: who asked for it.
      source: "upload" (stored under `HISTOPATH_SLIDE_DIR`) or "folder" (under
        `HISTOPATH_SLIDE_ROOT`).
      slide_path: the slide file (absolute; never shown).
      slide_sha256: SHA-256 of an uploaded file as received ("" for a folder slide).
      display_name: the name the user gave, else the upload's hash start or the folder
        slide's name.
      mpp: the microns per pixel the user gave for a file that does not say (None: the
        file's).
      state, worker, heartbeat_at: the queue (see above).
      tiles_done, tiles_total: progress (tiles on the tissue mask).
      error: why it failed (for the user: names no server path).
      output_dir: `slide_predict`'s outputs (slide.json, heatmap.png, tiles.geojson ...).
      width, height, slide_mpp: level-0 size and µm/px of the slide.
      probability, label, label_name, not_sure, uncertainty: the slide answer (as for an
        image; `label` None without tissue).
      tiles_called, model_name, model_version: what answered.
    """

    QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
    STATES = [(QUEUED, "Queued"), (RUNNING, "Running"), (DONE, "Done"), (FAILED, "Failed")]
    SOURCE_UPLOAD, SOURCE_FOLDER = "upload", "folder"
    SOURCES = [(SOURCE_UPLOAD, "Upload"), (SOURCE_FOLDER, "Slide folder")]

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True)
    finished_at = models.DateTimeField(null=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="slide_jobs")
    source = models.CharField(max_length=8, choices=SOURCES)
    slide_path = models.CharField(max_length=1024)
    slide_sha256 = models.CharField(max_length=64, blank=True)
    display_name = models.CharField(max_length=120)
    mpp = models.FloatField(null=True)
    state = models.CharField(max_length=8, choices=STATES, default=QUEUED, db_index=True)
    worker = models.CharField(max_length=64, blank=True)
    heartbeat_at = models.DateTimeField(null=True)
    tiles_done = models.PositiveIntegerField(default=0)
    tiles_total = models.PositiveIntegerField(null=True)
    error = models.CharField(max_length=500, blank=True)
    output_dir = models.CharField(max_length=1024, blank=True)
    width = models.PositiveIntegerField(null=True)
    height = models.PositiveIntegerField(null=True)
    slide_mpp = models.FloatField(null=True)
    probability = models.FloatField(null=True)
    label = models.PositiveSmallIntegerField(null=True)
    label_name = models.CharField(max_length=32, blank=True)
    not_sure = models.BooleanField(default=False)
    uncertainty = models.FloatField(null=True)
    tiles_called = models.PositiveIntegerField(null=True)
    model_name = models.CharField(max_length=200, blank=True)
    model_version = models.CharField(max_length=32, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"slide job {self.pk} {self.display_name}: {self.state}"

    @property
    def percent(self) -> int:
        """Progress in whole percent (100 once done)."""
        if self.state == self.DONE:
            return 100
        if not self.tiles_total:
            return 0
        return min(100, int(100 * self.tiles_done / self.tiles_total))
