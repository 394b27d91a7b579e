"""Commands packed in hiredis's C code (mollifier/packer.py): the same bytes as redis-py's own packer,
and what goes through the real clients (single node and cluster) comes back as it was sent."""

import enum

import pytest
import redis
from redis.cluster import RedisCluster
from redis.exceptions import DataError

from mollifier import client as redis_client
from mollifier import conf, scripts
from mollifier.packer import ArgumentPacker

ARGUMENTS = [
    ("SET", "key", "value"),
    ("EVALSHA", "abc123", 2, "mollifier:{o:1}:entry:run_a", b"raw\r\nbytes\x00", 0, -7, 2**63, 1.5, 1e20, 0.1),
    ("SET", "clé", "värde ✓ 日本"),
    ("SET", "empty", ""),
    ("SCRIPT LOAD", "return 1"),  # a command name of two words: two arguments on the wire
    ("CLIENT SETNAME", "drainer"),
    (b"CLIENT SETNAME", "drainer"),  # a name in bytes is split on its spaces too
    ("CLIENT\tSETNAME", "drainer"),  # and a name in text on any whitespace
]


class Count(int):
    pass


class Level(enum.IntEnum):
    HIGH = 3


@pytest.mark.parametrize("args", ARGUMENTS)
def test_the_same_bytes_as_redis_py(args):
    theirs = b"".join(redis.Connection().pack_command(*args))

    assert b"".join(ArgumentPacker().pack(*args)) == theirs


@pytest.mark.parametrize("value", [Count(5), Level.HIGH])
def test_subclasses_of_numbers_are_sent_as_redis_py_sends_them(value):
    theirs = b"".join(redis.Connection().pack_command("SET", "k", value))

    assert b"".join(ArgumentPacker().pack("SET", "k", value)) == theirs


def test_buffers_are_sent_as_their_bytes():
    packed = b"".join(ArgumentPacker().pack("SET", memoryview(b"k"), bytearray(b"v")))

    assert packed == b"".join(redis.Connection().pack_command("SET", "k", "v"))


@pytest.mark.parametrize("value", [None, True, ["a"], {"a": 1}])
def test_what_redis_has_no_form_for_is_refused_as_redis_py_refuses_it(value):
    with pytest.raises(DataError):
        redis.Connection().pack_command("SET", "k", value)
    with pytest.raises(DataError):
        ArgumentPacker().pack("SET", "k", value)


def test_the_clients_pack_with_it(store):
    pool = (
        store.get_default_node().redis_connection.connection_pool
        if isinstance(store, RedisCluster)
        else store.connection_pool
    )
    connection = pool.get_connection()
    try:
        assert isinstance(connection._command_packer, ArgumentPacker)
    finally:
        pool.release(connection)


def test_values_round_trip_through_redis(store):
    value = "värde ✓ \r\n\x00 日本".encode() + bytes(range(256))
    store.set("mollifier:{o:1}:packer", value)

    assert store.get("mollifier:{o:1}:packer") == value
    assert scripts.READ(
        keys=["mollifier:{o:1}:none", "mollifier:{o:1}:packer", "mollifier:{o:1}:none-row"], args=["run"], client=store
    ) == [[[None], value, None]]


@pytest.mark.parametrize("suffix", ["/0", "?db=0&socket_timeout=2.5"])
def test_a_cluster_url_may_name_database_0_and_its_own_options(cluster_url, settings, suffix):
    """As ``RedisCluster.from_url`` takes them: the cluster's only database, and options of the URL's
    own (here its socket timeout), which win over the mollifier's defaults."""
    settings.MOLLIFIER = {**settings.MOLLIFIER, "REDIS_CLUSTER_URL": cluster_url + suffix}
    client = redis_client.get()
    assert client.ping()
    timeout = client.get_default_node().redis_connection.connection_pool.connection_kwargs["socket_timeout"]
    assert timeout == (2.5 if "socket_timeout" in suffix else conf.redis_socket_timeout_ms() / 1000)
