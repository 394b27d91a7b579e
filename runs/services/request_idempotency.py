"""Request idempotency: ``x-trigger-request-idempotency-key`` makes a retried HTTP call safe.

The SDK sends one fresh uuid per call and the same one on each of its retries. The key, scoped to
(environment, task), maps to the run id for 24 hours through Django's cache (Redis). A cache that
cannot be reached is skipped: the task idempotency key and the Postgres constraint still hold. The
cache's client is the mollifier's (``REDIS_CLIENT_CLASS``), so it shares the Redis time budget and
circuit breaker: while the breaker is open the lookup costs nothing.
"""

import hashlib
import json
import logging

from django.conf import settings
from django.core.cache import cache

from mollifier.breaker import BreakerOpen

logger = logging.getLogger(__name__)


def _cache_key(*, request_key: str, environment_id: int, scope: list[str]) -> str:
    material = json.dumps([request_key, environment_id, *scope], separators=(",", ":"))
    return "reqidem:" + hashlib.sha256(material.encode()).hexdigest()


def request_lookup(*, request_key: str | None, environment_id: int, scope: list[str]) -> str | None:
    """The id remembered for this request, or None (also when the cache is unreachable)."""
    if not request_key:
        return None
    try:
        return cache.get(_cache_key(request_key=request_key, environment_id=environment_id, scope=scope))
    except BreakerOpen:  # Redis known not to answer: refused at once (mollifier/breaker.py)
        logger.debug("runs.request_idempotency.breaker_open env=%s", environment_id)
        return None
    except Exception:  # django-redis raises redis errors through; any of them means "not known"
        logger.warning("runs.request_idempotency.lookup_failed env=%s", environment_id, exc_info=True)
        return None


def request_remember(*, request_key: str | None, environment_id: int, scope: list[str], value: str) -> None:
    if not request_key:
        return
    try:
        cache.set(
            _cache_key(request_key=request_key, environment_id=environment_id, scope=scope),
            value,
            timeout=settings.TRIGGER["REQUEST_IDEMPOTENCY_TTL_SECONDS"],
        )
    except BreakerOpen:
        logger.debug("runs.request_idempotency.breaker_open env=%s", environment_id)
    except Exception:
        logger.warning("runs.request_idempotency.remember_failed env=%s", environment_id, exc_info=True)
