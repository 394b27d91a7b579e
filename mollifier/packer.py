"""How commands are packed for the wire: in hiredis's C code, with no pass over the arguments in
Python. Imported by the settings (django-redis's pool takes the packer), so it needs no Django."""

import hiredis
import redis
from redis.exceptions import DataError


class ArgumentPacker:
    """Packs a command for the wire in hiredis's C code, arguments as they are (str, bytes, int,
    float). redis-py's own packer first encodes each argument in Python: 0.5 µs an argument, and a
    drain round sends several per run (keys and run ids). The bytes on the wire are the same."""

    def pack(self, *args) -> list[bytes]:
        name = args[0]
        # A command name of several words ("SCRIPT LOAD") is one argument per word, as redis-py sends it.
        if isinstance(name, str) or (isinstance(name, bytes) and b" " in name):
            args = (*name.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            try:
                return [hiredis.pack_command(tuple(_as_redis_py_sends(arg) for arg in args))]
            except TypeError as error:
                raise DataError(f"{error} (got {[type(arg).__name__ for arg in args]})") from None


def _as_redis_py_sends(arg):
    """What hiredis refuses but redis-py sends: a buffer as its bytes, a subclass of int or float
    (an IntEnum, say) as its repr. Anything else (None, a bool, a list) stays, to be refused."""
    if isinstance(arg, (bytearray, memoryview)):
        return bytes(arg)
    if isinstance(arg, (int, float)) and not isinstance(arg, bool):
        return repr(arg).encode()
    return arg


class PackedConnection(redis.Connection):
    """A cluster node's connection, with the ArgumentPacker (the cluster client takes no packer)."""

    def __init__(self, **kwargs):
        super().__init__(command_packer=ArgumentPacker(), **kwargs)


class PackedSSLConnection(redis.SSLConnection):
    """The same, over TLS (a ``rediss://`` cluster URL)."""

    def __init__(self, **kwargs):
        super().__init__(command_packer=ArgumentPacker(), **kwargs)
