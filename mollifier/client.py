"""The only way into Redis for the mollifier (and so for the project)."""

from functools import lru_cache

from django_redis import get_redis_connection
from redis.cluster import RedisCluster

from mollifier import conf


@lru_cache(maxsize=4)
def _cluster(url: str) -> RedisCluster:
    return RedisCluster.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def get():
    """django-redis's connection for ``MOLLIFIER["REDIS_ALIAS"]``, or a Redis Cluster client when
    ``MOLLIFIER_REDIS_CLUSTER_URL`` is set. Responses are bytes."""
    if url := conf.redis_cluster_url():
        return _cluster(url)
    return get_redis_connection(conf.redis_alias())
