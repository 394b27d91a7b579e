"""Time as the mollifier counts it: epoch milliseconds. Scripts never read the clock: callers pass
``now_ms`` in, so tests (and drainers with a clock of their own) can move it."""

import time


def now_ms() -> int:
    return time.time_ns() // 1_000_000
