"""The form a pathologist fills in: one image file or one image URL, and a display name."""

from __future__ import annotations

from django import forms
from django.conf import settings


class PredictForm(forms.Form):
    """Exactly one of an uploaded image or an image URL."""

    image = forms.FileField(
        required=False,
        label="Image file",
        help_text="PNG, JPEG, BMP, GIF, TIFF or WebP; the type is checked from the content.",
        widget=forms.ClearableFileInput(attrs={"accept": "image/*"}),
    )
    image_url = forms.CharField(
        required=False,
        max_length=2048,
        label="or image URL",
        help_text="An http(s) link to an image on a public server.",
        widget=forms.URLInput(attrs={"placeholder": "https://example.org/slide.png", "inputmode": "url"}),
    )

    display_name = forms.CharField(
        required=False,
        max_length=120,
        label="Name in your history (optional)",
        help_text="For example a case number. Without one, the start of the image's SHA-256 is shown. "
        "File names and URLs are not recorded.",
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )

    def clean_display_name(self) -> str:
        return " ".join((self.cleaned_data.get("display_name") or "").split())

    def clean_image(self):
        upload = self.cleaned_data.get("image")
        if upload and upload.size > settings.HISTOPATH_MAX_UPLOAD_BYTES:
            limit = settings.HISTOPATH_MAX_UPLOAD_BYTES / 1024 / 1024
            raise forms.ValidationError(f"The file is larger than the limit of {limit:.1f} MiB.")
        return upload

    def clean(self):
        cleaned = super().clean()
        has_file = bool(cleaned.get("image"))
        has_url = bool((cleaned.get("image_url") or "").strip())
        if not self.errors and has_file == has_url:
            raise forms.ValidationError("Choose an image file or give an image URL (one of the two).")
        return cleaned
