"""``/metrics`` for Prometheus. Open by default (serve it on an internal address); with
METRICS_TOKEN set it needs ``Authorization: Bearer <token>``."""

import hmac

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST

from mollifier.metrics import exposition


def metrics_view(request):
    token = settings.METRICS_TOKEN
    if token and not hmac.compare_digest(request.headers.get("Authorization", ""), f"Bearer {token}"):
        return JsonResponse({"error": "Invalid or Missing metrics token"}, status=401)
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
