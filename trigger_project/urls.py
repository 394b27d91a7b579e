from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path
from django.views import defaults
from drf_spectacular.views import SpectacularAPIView

from mollifier.views import metrics_view


def healthz(request):
    return JsonResponse({"ok": True})


def _for_api(request, status: int, error: str, page):
    """API clients get JSON, as from every API view; people get Django's page."""
    if request.path.startswith("/api/"):
        return JsonResponse({"error": error}, status=status)
    return page()


def not_found(request, exception=None):
    return _for_api(request, 404, "Not found", lambda: defaults.page_not_found(request, exception))


def bad_request(request, exception=None):
    """What Django refuses before any view (a Host header not in ALLOWED_HOSTS, a suspicious
    request). The exception's text is not echoed: it names settings."""
    return _for_api(request, 400, "Bad request", lambda: defaults.bad_request(request, exception))


def server_error(request):
    """An unexpected error (the SDK retries a 5xx and reads ``error``)."""
    return _for_api(request, 500, "Internal server error", lambda: defaults.server_error(request))


handler404 = not_found
handler400 = bad_request
handler500 = server_error


urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz),
    path("metrics", metrics_view),
    path("api/schema", SpectacularAPIView.as_view(), name="openapi-schema"),
    path("", include("runs.api.urls")),
]
