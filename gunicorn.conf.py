"""gunicorn reads this file from the working directory by default (the command line overrides it).

With PROMETHEUS_MULTIPROC_DIR, each worker writes its metrics to files there; the Redis breaker's
gauge reports the worst of the *live* workers (``multiprocess_mode="livemax"``), so a worker's
files must be marked dead when it exits, or its last state would count forever.
"""

import os


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
