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
        if isinstance(name, str) and " " in name:  # "SCRIPT LOAD": one argument per word, as redis-py sends it
            args = (*name.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            # A buffer (memoryview, bytearray) is sent as its bytes; anything else Redis has no form
            # for (None, a bool, a list) is refused as redis-py refuses it.
            buffers = tuple(bytes(arg) if isinstance(arg, (bytearray, memoryview)) else arg for arg in args)
            try:
                return [hiredis.pack_command(buffers)]  # type: ignore[arg-type]  # the stub types a 1-tuple
            except TypeError as error:
                raise DataError(f"{error} (got {[type(arg).__name__ for arg in args]})") from None


class PackedConnection(redis.Connection):
    """A cluster node's connection, with the ArgumentPacker (the cluster client takes no packer)."""

    def __init__(self, **kwargs):
        super().__init__(command_packer=ArgumentPacker(), **kwargs)
