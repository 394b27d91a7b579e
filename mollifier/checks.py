"""Start-up checks on the Redis that holds the buffer: it must never evict keys.

A buffered run exists only in Redis until a drainer writes it, and its entry has no TTL. A Redis
whose ``maxmemory-policy`` is anything but ``noeviction`` deletes keys when it reaches ``maxmemory``:
accepted runs (``allkeys-*``), or the claims and idempotency keys that keep triggers exactly-once
(``volatile-*``). ``noeviction`` makes a full Redis refuse writes instead, which the trigger path
survives (it passes through to Postgres).

The check runs with Django's system checks (``check``, ``migrate``, ``runserver`` and every
management command that checks, the drainer included) as ``mollifier.W001``; gunicorn runs no
system checks, so each web worker logs the same finding at start (``trigger_project/wsgi.py``).
Managed Redis services often refuse ``CONFIG``: then the policy cannot be read, which is reported as
``mollifier.I001`` (information, so that ``check --deploy --fail-level WARNING`` passes) and is the
operator's to confirm.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from django.apps import AppConfig
from django.core.checks import CheckMessage, Info, register
from django.core.checks import Warning as CheckWarning
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from mollifier import client
from mollifier.client import REDIS_ERRORS
from mollifier.codec import as_text
from mollifier.exceptions import BufferUnavailable

logger = logging.getLogger(__name__)

# A check at start must not hold a worker or a command for the request path's timeouts and retries:
# one attempt, this long to connect and this long to answer.
PROBE_TIMEOUT_SECONDS = 1.0
SAFE_POLICY = "noeviction"


@dataclass(frozen=True)
class PolicyReading:
    """One Redis node's ``maxmemory-policy``, or why it could not be read."""

    node: str  # host:port or socket path (never the password)
    policy: str | None = None
    error: str | None = None


def _node_name(kwargs: dict[str, Any]) -> str:
    if path := kwargs.get("path"):
        return str(path)
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def _read_policy(pool: redis.ConnectionPool) -> PolicyReading:
    """``CONFIG GET maxmemory-policy`` over a connection of its own, with the probe's budget."""
    kwargs = {
        **pool.connection_kwargs,
        "socket_timeout": PROBE_TIMEOUT_SECONDS,
        "socket_connect_timeout": PROBE_TIMEOUT_SECONDS,
        "retry": Retry(NoBackoff(), 0),
    }
    node = _node_name(kwargs)
    probe = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))
    try:
        answer = probe.config_get("maxmemory-policy")
    except REDIS_ERRORS as error:
        return PolicyReading(node=node, error=f"{type(error).__name__}: {error}")
    finally:
        probe.connection_pool.disconnect()
    value = answer.get("maxmemory-policy") or answer.get(b"maxmemory-policy")  # type: ignore[call-overload]
    if value is None:
        return PolicyReading(node=node, error="CONFIG GET returned no maxmemory-policy")
    return PolicyReading(node=node, policy=as_text(value))


def maxmemory_policies() -> list[PolicyReading]:
    """The policy of every node that holds buffered runs: the one Redis, or each cluster primary.

    Never raises for a Redis that is down, hung or refuses ``CONFIG``: that is a reading with an
    error. Bounded by ``PROBE_TIMEOUT_SECONDS`` to connect and again to answer, per node.
    """
    try:
        redis_client = client.get()
        if isinstance(redis_client, RedisCluster):
            pools = [node.redis_connection.connection_pool for node in redis_client.get_primaries()]
        else:
            pools = [redis_client.connection_pool]
    except BufferUnavailable as error:  # a cluster client reaches its nodes as it is built
        return [PolicyReading(node="cluster", error=f"{type(error).__name__}: {error}")]
    return [_read_policy(pool) for pool in pools]


@register("mollifier")
def check_redis_eviction(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    if app_configs is not None and not any(config.name == "mollifier" for config in app_configs):
        return []
    messages: list[CheckMessage] = []
    for reading in maxmemory_policies():
        if reading.error is not None:
            messages.append(
                Info(
                    f"Could not read the maxmemory-policy of the Redis at {reading.node} ({reading.error}).",
                    hint=f"Make sure it is {SAFE_POLICY}: buffered runs live only in Redis (README: Redis in production).",
                    id="mollifier.I001",
                )
            )
        elif reading.policy != SAFE_POLICY:
            messages.append(
                CheckWarning(
                    f"The Redis at {reading.node} has maxmemory-policy {reading.policy}: when it fills up it "
                    "deletes keys, and buffered runs live only in Redis.",
                    hint=f"Set maxmemory-policy {SAFE_POLICY} (README: Redis in production).",
                    id="mollifier.W001",
                )
            )
    return messages


def log_redis_eviction_policy() -> None:
    """The same finding as one log line per node, for processes that run no system checks."""
    for reading in maxmemory_policies():
        if reading.error is not None:
            logger.info("mollifier.redis.policy_unknown node=%s error=%s", reading.node, reading.error)
        elif reading.policy != SAFE_POLICY:
            logger.warning(
                "mollifier.redis.evicting node=%s maxmemory-policy=%s: buffered runs can be deleted; set %s",
                reading.node,
                reading.policy,
                SAFE_POLICY,
            )
