"""Watching what the suite's Redis database receives (MONITOR), to count round trips."""

import threading

import redis as redis_py
from django.conf import settings as django_settings

MARKER = "end-of-watch"


def watch_redis():
    """Record every command the suite's Redis database receives until ``stop()`` is called;
    ``stop()`` returns them as MONITOR events (``command``, ``client_type``: "lua" for the commands a
    script ran)."""
    url = django_settings.REDIS_URL
    watcher = redis_py.Redis.from_url(url)
    # MONITOR reports every database of the server: other suites may share it.
    db = int(watcher.connection_pool.connection_kwargs.get("db") or 0)
    events: list[dict] = []
    ready = threading.Event()

    def run():
        with watcher.monitor() as monitor:
            ready.set()
            for event in monitor.listen():
                if event["command"].endswith(MARKER):
                    return
                if event["db"] == db:
                    events.append(event)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(5)

    def stop() -> list[dict]:
        redis_py.Redis.from_url(url).echo(MARKER)
        thread.join(5)
        return events

    return stop


def round_trips(events: list[dict]) -> list[str]:
    """The commands clients sent (not those scripts ran, not connection setup): one per round trip
    on a single node (a pipeline would show several)."""
    return [
        event["command"]
        for event in events
        if event.get("client_type") != "lua"
        and event["command"].split(" ", 1)[0].upper() not in ("SELECT", "CLIENT", "HELLO")
    ]
