"""URL routes of the web app."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from histopath.serving.webapp.predictions import slide_views, views
from histopath.serving.webapp.predictions.accounts import SignInForm

urlpatterns = [
    path("", views.index, name="index"),
    path("history/", views.history, name="history"),
    path("healthz", views.healthz, name="healthz"),
    path("slides/", slide_views.slide_list, name="slides"),
    path("slides/upload", slide_views.slide_upload, name="slide_upload"),
    path("slides/pick", slide_views.slide_pick, name="slide_pick"),
    path("slides/<int:pk>/", slide_views.slide_page, name="slide"),
    path("slides/<int:pk>/status", slide_views.slide_status, name="slide_status"),
    path("slides/<int:pk>/slide.dzi", slide_views.slide_dzi, name="slide_dzi"),
    path("slides/<int:pk>/slide_files/<int:level>/<int:column>_<int:row>.jpeg", slide_views.slide_tile,
         name="slide_tile"),
    path("slides/<int:pk>/<str:name>", slide_views.slide_output, name="slide_output"),
    path("static/<path:path>", slide_views.viewer_static, name="viewer_static"),
    path("accounts/login/", auth_views.LoginView.as_view(
        template_name="predictions/login.html", authentication_form=SignInForm,
        redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
]

handler400 = views.bad_request
handler403 = views.forbidden
