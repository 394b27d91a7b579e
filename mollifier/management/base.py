"""What the management commands that use the buffer share."""

import signal
import threading

from django.core.management.base import BaseCommand, CommandError

from mollifier.exceptions import BufferUnavailable


class BufferCommand(BaseCommand):
    """A command that reads or changes the buffer. When its Redis does not answer, the operator
    (who runs these commands exactly then) gets one line that says so and exit code 1, not a
    traceback."""

    def execute(self, *args, **options):
        try:
            return super().execute(*args, **options)
        except BufferUnavailable as error:
            raise CommandError(
                f"the buffer's Redis did not answer ({error}); nothing more was done. "
                "Check that Redis is up and that REDIS_URL names it."
            ) from None


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (Ctrl-C), for a loop that finishes what it has in hand and
    returns. The handler sets it from a thread of its own: a handler runs in the main thread between
    two bytecodes, possibly while that thread holds the event's lock (inside ``wait``), and
    ``set()`` there would wait for that lock forever."""
    stop = threading.Event()

    def request_stop(signum, frame):
        threading.Thread(target=stop.set, name="mollifier-stop", daemon=True).start()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return stop
