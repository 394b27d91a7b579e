"""Wait-and-bounce for changes to a run that a drainer holds right now.

A drainer holds an entry for one round (typically tens of milliseconds). A change arriving then is
retried for up to MID_DRAIN_WAIT_SECONDS; after that the API answers 503, which the SDK retries.
Never a wrong answer: the change lands on the entry, or on the row once it is written.
"""

import random
import time
from collections.abc import Callable
from typing import TypeVar

from runs.exceptions import ServiceUnavailable

MID_DRAIN_WAIT_SECONDS = 2.0
MID_DRAIN_POLL_SECONDS = 0.02

T = TypeVar("T")


def retry_while_draining(attempt: Callable[[], T], *, busy: Callable[[T], bool]) -> T:
    deadline = time.monotonic() + MID_DRAIN_WAIT_SECONDS
    while True:
        result = attempt()
        if not busy(result):
            return result
        if time.monotonic() >= deadline:
            raise ServiceUnavailable("Run materialisation timed out")
        time.sleep(MID_DRAIN_POLL_SECONDS * random.uniform(0.5, 1.5))  # jitter: no lockstep polling
