"""The Django admin: users and groups for administrators; predictions and the audit trail
read-only for everyone (they are append-only records)."""

from django.contrib import admin

from histopath.serving.webapp.predictions.models import AuditEvent, Prediction


class ReadOnlyAdmin(admin.ModelAdmin):
    """Lists and shows records; nobody adds, changes or deletes them here."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Prediction)
class PredictionAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "user", "display_name", "label_name", "not_sure", "probability", "uncertainty",
                    "model_name", "model_version", "source")
    list_filter = ("not_sure", "label_name", "source", "model_version", "tissue_detected")
    search_fields = ("user__username", "display_name", "image_sha256")
    date_hierarchy = "created_at"


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "kind", "username", "client_ip", "detail")
    list_filter = ("kind",)
    search_fields = ("username", "client_ip")
    date_hierarchy = "created_at"
