"""What the mollifier raises; callers decide how each maps to an answer."""

from redis.exceptions import RedisClusterException, RedisError

# Any Redis failure: connection refused, timeout, script errors, and the cluster client's own
# exception (which redis-py does not derive from RedisError). Use in ``except`` and isinstance.
BufferUnavailable = (RedisError, RedisClusterException)


class BufferFull(Exception):
    """The organisation holds its cap of buffered entries; retry after ``retry_after_ms``."""

    def __init__(self, *, org_id: str, count: int, retry_after_ms: int):
        super().__init__(f"organisation {org_id} has {count} buffered runs")
        self.org_id = org_id
        self.count = count
        self.retry_after_ms = retry_after_ms


class ClaimTimeout(Exception):
    """Another trigger with the same idempotency key held the claim past the wait limit."""


class SinkUnavailable(Exception):
    """The sink's database could not be reached: retry the whole round later (with backoff)."""
