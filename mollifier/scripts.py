"""The Lua scripts, loaded once from ``mollifier/lua`` (shipped as package data).

A script may start with libraries from ``lua/lib`` (shared functions), prepended at load time.
The SHA is computed from the bytes, with no connection; the client is passed per call and redis-py
loads the script on the first NOSCRIPT.
"""

from importlib.resources import files

from redis.commands.core import Script

_LUA = files("mollifier").joinpath("lua")


def _load(name: str, *libs: str) -> Script:
    source = b"\n".join([*(_LUA.joinpath("lib", lib).read_bytes() for lib in libs), _LUA.joinpath(name).read_bytes()])
    return Script(None, source)  # type: ignore[arg-type]  # redis-py types the client as required


TRIP = _load("trip.lua", "trip.lua", "count.lua")
GATE_ACCEPT = _load("gate_accept.lua", "trip.lua", "accept.lua", "count.lua")
ACCEPT = _load("accept.lua", "accept.lua")
POP = _load("pop.lua", "lease.lua", "bulk.lua")
READ = _load("read.lua")
LISTING = _load("listing.lua")
PIN = _load("pin.lua", "lease.lua", "bulk.lua")
UNPIN = _load("unpin.lua", "lease.lua")
ACK = _load("ack.lua", "lease.lua", "count.lua", "bulk.lua")
RETRY = _load("retry.lua", "lease.lua")
FAIL = _load("fail.lua", "lease.lua", "row.lua")
PARK = _load("park.lua", "lease.lua")
UNPARK = _load("unpark.lua")
DISCARD = _load("discard.lua")
MUTATE = _load("mutate.lua", "lease.lua", "row.lua")
RESET_IDEMPOTENCY = _load("reset_idempotency.lua", "lease.lua", "row.lua")
CLAIM = _load("claim.lua")
PUBLISH = _load("publish.lua")
RELEASE = _load("release.lua")
ORG_UNINDEX = _load("org_unindex.lua")
DRAIN_RATE = _load("drain_rate.lua")
DRAIN_ADAPT = _load("drain_adapt.lua")
DRAIN_ETA = _load("drain_eta.lua")
POP_DUE = _load("pop_due.lua")
RECLAIM = _load("reclaim.lua", "lease.lua")
FORGET_REQUEST = _load("forget_request.lua")
CLEAR_KEYED_MARKER = _load("clear_keyed_marker.lua")
