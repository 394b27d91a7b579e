"""The global memory guard: while the buffer's Redis nears its ``maxmemory``, new entries are
refused and those triggers pass through to Postgres (DESIGN §12).

Buffered runs are data: Redis runs with ``maxmemory-policy noeviction`` (mollifier/checks.py warns
otherwise), so a full Redis would refuse writes — also the small ones that keep triggers exactly
once (claims, request idempotency) and the drainer's own bookkeeping. The guard stops accepting
entries before that, at ``MOLLIFIER_REDIS_MEMORY_LIMIT_PERCENT`` of ``maxmemory``; entries already
buffered stay and drain as usual, which frees the memory.

The reading is ``INFO memory`` (``used_memory`` against ``maxmemory``; every primary of a cluster,
the fullest one counts), cached per process for ``MOLLIFIER_REDIS_MEMORY_CHECK_MS``: one call a
second per web process, not one per trigger. A Redis without ``maxmemory`` (0) has no limit to
near: the guard stays off. A Redis that refuses ``INFO`` (some managed services restrict it) is
read as "unknown", logged, and asked again a minute later; the guard stays off meanwhile.
"""

import logging
import threading
import time
from dataclasses import dataclass

from redis.cluster import RedisCluster

from mollifier import client as redis_client
from mollifier import conf
from mollifier.exceptions import BufferUnavailable

logger = logging.getLogger(__name__)

UNKNOWN_RETRY_SECONDS = 60


@dataclass(frozen=True)
class MemoryReading:
    used_bytes: int
    max_bytes: int  # 0: no maxmemory set

    @property
    def ratio(self) -> float:
        return self.used_bytes / self.max_bytes if self.max_bytes else 0.0

    def near_full(self, percent: int) -> bool:
        return bool(percent) and self.max_bytes > 0 and self.ratio * 100 >= percent


def read(redis) -> MemoryReading:
    """Redis's memory now (the fullest primary of a cluster). Raises BufferUnavailable."""
    if isinstance(redis, RedisCluster):
        replies = redis.info("memory", target_nodes=RedisCluster.PRIMARIES)
        infos = list(replies.values()) if "used_memory" not in replies else [replies]
    else:
        infos = [redis.info("memory")]
    readings = [MemoryReading(int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))) for info in infos]
    return max(readings, key=lambda reading: (reading.ratio, reading.used_bytes))


class _Guard:
    def __init__(self):
        self.full = False
        self.reading: MemoryReading | None = None
        self.next_check = 0.0
        self.lock = threading.Lock()

    def near_full(self, redis) -> bool:
        now = time.monotonic()
        if now < self.next_check:
            return self.full
        with self.lock:
            if now < self.next_check:  # another thread refreshed it meanwhile
                return self.full
            try:
                reading = read(redis)
            except BufferUnavailable as error:
                if redis_client.unanswered(error):
                    raise  # Redis is not answering: the caller fails open anyway
                logger.warning("mollifier.redis.memory_unknown error=%s (memory guard off)", error)
                self.full, self.reading = False, None
                self.next_check = now + UNKNOWN_RETRY_SECONDS
                return False
            percent = conf.redis_memory_limit_percent()
            full = reading.near_full(percent)
            if full != self.full:
                log = logger.warning if full else logger.info
                log(
                    "mollifier.redis.memory_guard %s used=%d maxmemory=%d limit=%d%%",
                    "on: new entries refused, triggers pass through" if full else "off: buffering again",
                    reading.used_bytes,
                    reading.max_bytes,
                    percent,
                )
            self.full, self.reading = full, reading
            self.next_check = now + conf.redis_memory_check_ms() / 1000
            return full


_guard = _Guard()


def near_full(redis) -> bool:
    """Should new entries be refused now? Cached per process (see the module docstring). Raises
    BufferUnavailable when Redis does not answer."""
    if not conf.redis_memory_limit_percent():
        return False
    return _guard.near_full(redis)


def reset() -> None:
    """Forget the cached reading (tests)."""
    global _guard
    _guard = _Guard()
