"""URL routes of the web app."""

from django.urls import path

from histopath.serving.webapp.predictions import views

urlpatterns = [
    path("", views.index, name="index"),
    path("history/", views.history, name="history"),
    path("healthz", views.healthz, name="healthz"),
]
