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


def bad_request(request, exception=None):
    """What Django refuses before any view (a Host header not in ALLOWED_HOSTS, a suspicious
    request): JSON for API clients too. The exception's text is not echoed: it names settings."""
    if request.path.startswith("/api/"):
        return JsonResponse({"error": "Bad request"}, status=400)
    from django.views.defaults import bad_request as page

    return page(request, exception)


def server_error(request):
    """An unexpected error: JSON for API clients (the SDK retries a 5xx and reads ``error``)."""
    if request.path.startswith("/api/"):
        return JsonResponse({"error": "Internal server error"}, status=500)
    from django.views.defaults import server_error as page

    return page(request)


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
