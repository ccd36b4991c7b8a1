"""URL routes of the web app."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from histopath.serving.webapp.predictions import views
from histopath.serving.webapp.predictions.accounts import SignInForm

urlpatterns = [
    path("", views.index, name="index"),
    path("history/", views.history, name="history"),
    path("healthz", views.healthz, name="healthz"),
    path("accounts/login/", auth_views.LoginView.as_view(
        template_name="predictions/login.html", authentication_form=SignInForm,
        redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
]

handler400 = views.bad_request
handler403 = views.forbidden
