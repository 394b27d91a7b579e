import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "trigger_project.settings")
application = get_asgi_application()

# Requests stop waiting for a Postgres known not to answer (not the drainer, nor commands: their own).
from trigger_project.postgres import breaker  # noqa: E402

breaker.enable()
