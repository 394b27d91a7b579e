"""The served URLs plus two authenticated endpoints that do no trigger work, P1's baselines: the
framework's ceiling, and that ceiling less one Redis round trip."""

from django.urls import path
from rest_framework.response import Response

from mollifier import keys
from mollifier.client import get as redis_client
from runs.api.views import EnvironmentApi
from trigger_project.urls import urlpatterns as served


class NoopApi(EnvironmentApi):
    """Authenticates the key and parses the JSON body like trigger does, then does nothing."""

    def post(self, request):
        return Response({"ok": isinstance(request.data, dict)})


class NoopRedisApi(EnvironmentApi):
    """The no-op plus exactly one Redis round trip on the mollifier's client: a GET of the caller's
    trip flag, a key the gate reads. What one Redis call costs a trigger on this machine, the
    ceiling for a mollified trigger (which makes one)."""

    def post(self, request):
        environment = self.environment
        tripped = redis_client().get(keys.tripped(str(environment.organization_id), str(environment.pk)))
        return Response({"ok": isinstance(request.data, dict), "tripped": tripped is not None})


urlpatterns = [path("bench/noop", NoopApi.as_view()), path("bench/noop-redis", NoopRedisApi.as_view()), *served]
