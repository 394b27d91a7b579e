import pytest
from redis.cluster import RedisCluster

from mollifier import client as redis_client
from tests.redis_cluster import redis_cluster


@pytest.fixture(scope="session")
def cluster_url():
    with redis_cluster() as url:
        yield url


@pytest.fixture(params=["single", "cluster"])
def store(request, settings):
    """Run the test against single-node Redis and against a real 3-master Redis Cluster.

    Returns the raw client the buffer uses, emptied first.
    """
    if request.param == "cluster":
        settings.MOLLIFIER = {**settings.MOLLIFIER, "REDIS_CLUSTER_URL": request.getfixturevalue("cluster_url")}
        client = redis_client.get()
        client.flushdb(target_nodes=RedisCluster.PRIMARIES)
    else:
        client = redis_client.get()
    return client
