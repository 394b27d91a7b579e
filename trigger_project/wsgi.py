import os
import sys

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "trigger_project.settings")
application = get_wsgi_application()

# Requests stop waiting for a Postgres known not to answer (not the drainer, nor commands: their own).
from trigger_project.postgres import breaker  # noqa: E402

breaker.enable()

# gunicorn runs no system checks: each worker says at start when the buffer's Redis would evict keys.
from mollifier.checks import log_redis_eviction_policy  # noqa: E402

log_redis_eviction_policy()

# Served by gunicorn (however started, with or without gunicorn.conf.py): what it refuses before
# Django sees a request is answered in the API's error shape too.
if "gunicorn" in sys.modules:
    from trigger_project import gunicorn_errors

    gunicorn_errors.install()
