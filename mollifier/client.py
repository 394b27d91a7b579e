"""The only way into Redis for the mollifier (and so for the project).

Every command, script and pipeline through these clients raises ``BufferUnavailable`` for any Redis
failure (refused, timed out, an error reply), so callers catch one exception of ours, not redis-py's
several families. django-redis builds ``BufferRedis`` for the cache alias (``REDIS_CLIENT_CLASS``).

Each call also passes the circuit breaker of its server (``mollifier/breaker.py``): while Redis is
known not to answer, calls fail at once instead of waiting for the socket timeout. The time budget
itself is the clients' socket timeouts (``MOLLIFIER_REDIS_SOCKET_TIMEOUT_MS`` and
``_CONNECT_TIMEOUT_MS``) with no retries (``NO_RETRY``): redis-py's retries would multiply a hang.
"""

from functools import lru_cache
from urllib.parse import urlsplit

import redis
from django_redis import get_redis_connection
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.cluster import RedisCluster
from redis.connection import parse_url
from redis.exceptions import (
    ClusterDownError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
)
from redis.retry import Retry

from mollifier import breaker, conf
from mollifier.exceptions import BufferUnavailable
from mollifier.packer import PackedConnection, PackedSSLConnection

REDIS_ERRORS = (RedisError, RedisClusterException)  # the cluster client's own is not a RedisError
NO_RETRY = Retry(NoBackoff(), 0)
# Error replies that mean "this server cannot serve anyone right now", not "this call was wrong".
_UNAVAILABLE_REPLIES = ("BUSY", "LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN")


def not_answering(error: BaseException) -> bool:
    """Is this failure Redis not answering (counted by the breaker), rather than an answer?"""
    if isinstance(error, (redis.ConnectionError, redis.TimeoutError, ClusterDownError, SlotNotCoveredError)):
        return True
    if type(error) is RedisClusterException:  # "cannot connect to any node", not a usage error
        return True
    return isinstance(error, ResponseError) and str(error).startswith(_UNAVAILABLE_REPLIES)


def unanswered(error: BufferUnavailable) -> bool:
    """Did Redis not answer (refused, hung, the breaker open), rather than answer with an error?"""
    return error.__cause__ is None or not_answering(error.__cause__)


def _server_name(kwargs: dict) -> str:
    if path := kwargs.get("path"):
        return str(path)
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def _guarded(gate: breaker.Breaker, call, *args, **kwargs):
    """``call`` through ``gate``: refused at once while it is open; every outcome reported."""
    probe = gate.admit()
    try:
        result = call(*args, **kwargs)
    except NoScriptError:
        gate.succeeded(probe)
        raise  # redis-py's Script loads the script and retries on this one
    except REDIS_ERRORS as error:
        if not_answering(error):
            gate.failed(probe, error)
        else:
            gate.succeeded(probe)
        raise BufferUnavailable(f"{type(error).__name__}: {error}") from error
    except BaseException:
        gate.released(probe)
        raise
    gate.succeeded(probe)
    return result


def _ping(call) -> None:
    """The half-open probe: returns when Redis answers (an error reply is an answer too)."""
    try:
        call("PING")
    except REDIS_ERRORS as error:
        if not_answering(error):
            raise


def _pool_breaker(pool: redis.ConnectionPool) -> breaker.Breaker:
    gate = breaker.for_server(_server_name(pool.connection_kwargs))
    if gate.prober is None:  # a plain client on the same pool: the probe must not pass the breaker
        gate.prober = lambda: _ping(redis.Redis(connection_pool=pool).execute_command)
    return gate


class BufferPipeline(Pipeline):
    def execute(self, raise_on_error: bool = True):
        return _guarded(_pool_breaker(self.connection_pool), super().execute, raise_on_error)


class BufferRedis(redis.Redis):
    def execute_command(self, *args, **options):
        return _guarded(self._breaker, super().execute_command, *args, **options)

    @property
    def _breaker(self) -> breaker.Breaker:
        return _pool_breaker(self.connection_pool)

    def pipeline(self, transaction=True, shard_hint=None) -> BufferPipeline:
        return BufferPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)


class BufferCluster(RedisCluster):
    breaker_name = "cluster"

    def execute_command(self, *args, **options):
        return _guarded(self._breaker, super().execute_command, *args, **options)

    @property
    def _breaker(self) -> breaker.Breaker:
        gate = breaker.for_server(self.breaker_name)
        if gate.prober is None:
            gate.prober = lambda: _ping(super(BufferCluster, self).execute_command)
        return gate


def check_breaker(client: "BufferRedis | BufferCluster") -> None:
    """Raise BreakerOpen when ``client``'s breaker would refuse a call now (no probe is due)."""
    if isinstance(client, (BufferCluster, BufferRedis)):
        client._breaker.check()


@lru_cache(maxsize=4)
def _cluster(url: str) -> BufferCluster:
    name = f"cluster:{urlsplit(url).hostname}:{urlsplit(url).port or 6379}"
    # The URL's options, but not its connection class: given the URL itself, redis-py puts plain
    # SSLConnection over ours for rediss:// and drops the packer. TLS or not, the class is ours.
    # As from_url, the URL's own options (its timeouts, say) win over the defaults, and /0 is
    # accepted: a cluster has database 0 only, and the client refuses the argument outright.
    options = parse_url(url)
    if options.get("db") == 0:
        del options["db"]
    client = _guarded(
        breaker.for_server(name),  # the client reaches its nodes as it is built: not while it is open
        BufferCluster,
        **{
            "socket_timeout": conf.redis_socket_timeout_ms() / 1000,
            "socket_connect_timeout": conf.redis_connect_timeout_ms() / 1000,
            "retry": NO_RETRY,
            **options,
            "connection_class": PackedSSLConnection if urlsplit(url).scheme == "rediss" else PackedConnection,
        },
    )
    client.breaker_name = name
    return client


def get() -> BufferRedis | BufferCluster:
    """django-redis's connection for ``MOLLIFIER["REDIS_ALIAS"]``, or a Redis Cluster client when
    ``MOLLIFIER_REDIS_CLUSTER_URL`` is set. Responses are bytes."""
    if url := conf.redis_cluster_url():
        return _cluster(url)
    return get_redis_connection(conf.redis_alias())
