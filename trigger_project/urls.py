from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path

from mollifier.views import metrics_view


def healthz(request):
    return JsonResponse({"ok": True})


urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz),
    path("metrics", metrics_view),
    path("", include("runs.api.urls")),
]
