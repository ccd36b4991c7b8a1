"""The prediction log: one row per image classified by the web app."""

from django.db import models


class Prediction(models.Model):
    """One answered prediction.

    Attributes:
      created_at: when the prediction was made.
      image_sha256: SHA-256 of the image bytes exactly as received.
      source: "upload" or "url".
      source_name: the uploaded file's name or the fetched URL (truncated).
      model_name: the model that answered.
      model_version: its version.
      probability: probability of malignant.
      label: 0 benign, 1 malignant.
      label_name: "benign" or "malignant".
    """

    SOURCE_UPLOAD = "upload"
    SOURCE_URL = "url"
    SOURCES = [(SOURCE_UPLOAD, "Upload"), (SOURCE_URL, "URL")]

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    image_sha256 = models.CharField(max_length=64, db_index=True)
    source = models.CharField(max_length=8, choices=SOURCES)
    source_name = models.CharField(max_length=500, blank=True)
    model_name = models.CharField(max_length=200)
    model_version = models.CharField(max_length=32)
    probability = models.FloatField()
    label = models.PositiveSmallIntegerField()
    label_name = models.CharField(max_length=32)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.label_name} p={self.probability:.3f}"
