"""The served URLs plus a no-op authenticated endpoint: the framework's ceiling for P1."""

from django.urls import path
from rest_framework.response import Response

from runs.api.views import EnvironmentApi
from trigger_project.urls import urlpatterns as served


class NoopApi(EnvironmentApi):
    """Authenticates the key and parses the JSON body like trigger does, then does nothing."""

    def post(self, request):
        return Response({"ok": isinstance(request.data, dict)})


urlpatterns = [path("bench/noop", NoopApi.as_view()), *served]
