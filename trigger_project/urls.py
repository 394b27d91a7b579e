from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from mollifier.views import metrics_view


def healthz(request):
    return JsonResponse({"ok": True})


def not_found(request, exception=None):
    """API clients get JSON, as from every API view; people get Django's page."""
    if request.path.startswith("/api/"):
        return JsonResponse({"error": "Not found"}, status=404)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


handler404 = not_found


urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz),
    path("metrics", metrics_view),
    path("api/schema", SpectacularAPIView.as_view(), name="openapi-schema"),
    path("", include("runs.api.urls")),
]
