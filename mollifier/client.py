"""The only way into Redis for the mollifier (and so for the project).

Every command, script and pipeline through these clients raises ``BufferUnavailable`` for any Redis
failure (refused, timed out, an error reply), so callers catch one exception of ours, not redis-py's
several families. django-redis builds ``BufferRedis`` for the cache alias (``REDIS_CLIENT_CLASS``).
"""

from functools import lru_cache

import redis
from django_redis import get_redis_connection
from redis.client import Pipeline
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from mollifier import conf
from mollifier.exceptions import BufferUnavailable

REDIS_ERRORS = (RedisError, RedisClusterException)  # the cluster client's own is not a RedisError


class _Translated:
    def execute_command(self, *args, **options):
        try:
            return super().execute_command(*args, **options)  # type: ignore[misc]
        except NoScriptError:
            raise  # redis-py's Script loads the script and retries on this one
        except REDIS_ERRORS as error:
            raise BufferUnavailable(f"{type(error).__name__}: {error}") from error


class BufferPipeline(Pipeline):
    def execute(self, raise_on_error: bool = True):
        try:
            return super().execute(raise_on_error)
        except REDIS_ERRORS as error:
            raise BufferUnavailable(f"{type(error).__name__}: {error}") from error


class BufferRedis(_Translated, redis.Redis):
    def pipeline(self, transaction=True, shard_hint=None) -> BufferPipeline:
        return BufferPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)


class BufferCluster(_Translated, RedisCluster):
    pass


@lru_cache(maxsize=4)
def _cluster(url: str) -> BufferCluster:
    try:
        return BufferCluster.from_url(url, socket_timeout=2, socket_connect_timeout=2)  # type: ignore[return-value]  # from_url builds cls
    except REDIS_ERRORS as error:  # the client reaches its nodes as it is built
        raise BufferUnavailable(f"{type(error).__name__}: {error}") from error


def get() -> BufferRedis | BufferCluster:
    """django-redis's connection for ``MOLLIFIER["REDIS_ALIAS"]``, or a Redis Cluster client when
    ``MOLLIFIER_REDIS_CLUSTER_URL`` is set. Responses are bytes."""
    if url := conf.redis_cluster_url():
        return _cluster(url)
    return get_redis_connection(conf.redis_alias())
