import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "trigger_project.settings")
application = get_wsgi_application()

# Requests stop waiting for a Postgres known not to answer (not the drainer, nor commands: their own).
from trigger_project.postgres import breaker  # noqa: E402

breaker.enable()

# gunicorn runs no system checks: each worker says at start when the buffer's Redis would evict keys.
from mollifier.checks import log_redis_eviction_policy  # noqa: E402

log_redis_eviction_policy()
