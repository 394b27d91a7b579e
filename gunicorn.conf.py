"""gunicorn reads this file from the working directory by default (the command line overrides it).

With PROMETHEUS_MULTIPROC_DIR, each worker writes its metrics to files there; the Redis breaker's
gauge reports the worst of the *live* workers (``multiprocess_mode="livemax"``), so a worker's
files must be marked dead when it exits, or its last state would count forever.

Requests gunicorn itself refuses are answered in the API's error shape (trigger_project/gunicorn_errors.py).
"""

import os

from trigger_project import gunicorn_errors

gunicorn_errors.install()


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
