"""``Authorization: Bearer <secret key>`` → the environment the key belongs to.

Keys are compared by SHA-256 only; the clear key is never stored. No sessions or CSRF are involved
on the API (the SDK sends no cookies).

Each web process keeps a key's environment (with its organisation and project) for
TRIGGER_AUTH_CACHE_SECONDS: the lookup was ~40% of a trigger's CPU. So a rotated key, or an
organisation's changed feature flags, take effect within that time. Unknown keys are never cached.

While Postgres cannot be asked (down, hung: the lookup fails, or the web tier's breaker refuses it),
a key this process has seen in the last STALE_SECONDS keeps its environment: its triggers can still
be buffered and its buffered runs read. A key rotated just before the outage keeps working until
Postgres answers again.
"""

import time
from dataclasses import dataclass

from django.conf import settings
from django.db import InterfaceError, OperationalError
from rest_framework import authentication, exceptions

from runs.models import RuntimeEnvironment


@dataclass(frozen=True)
class EnvironmentPrincipal:
    """What ``request.user`` is on the API: the environment a secret key opens."""

    environment: RuntimeEnvironment
    is_authenticated: bool = True


class SecretKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != self.keyword.lower() or not key.strip():
            raise exceptions.NotAuthenticated("Invalid or Missing API key")
        environment = environment_for_key(key.strip())
        if environment is None:
            raise exceptions.AuthenticationFailed("Invalid API Key")
        return EnvironmentPrincipal(environment), key.strip()

    def authenticate_header(self, request):
        return self.keyword  # makes DRF answer 401 rather than 403


class KeyCache(dict[str, tuple[float, RuntimeEnvironment]]):
    """key hash → (expiry on the monotonic clock, environment): this process's, bounded."""

    LIMIT = 10_000
    STALE_SECONDS = 900  # past its expiry, an entry still serves while Postgres cannot be asked


key_cache = KeyCache()


def environment_for_key(key: str) -> RuntimeEnvironment | None:
    """The environment of a secret key (cached briefly per process), or None."""
    key_hash = RuntimeEnvironment.hash_api_key(key)
    now = time.monotonic()
    if (hit := key_cache.get(key_hash)) is not None and hit[0] > now:
        return hit[1]
    try:
        environment = (
            RuntimeEnvironment.objects.select_related("organization", "project").filter(api_key_hash=key_hash).first()
        )
    except (OperationalError, InterfaceError):
        if hit is not None and hit[0] + KeyCache.STALE_SECONDS > now:
            return hit[1]
        raise
    ttl = settings.TRIGGER["AUTH_CACHE_SECONDS"]
    if environment is None:
        key_cache.pop(key_hash, None)  # rotated or removed: never served stale again
    elif ttl > 0:
        if len(key_cache) >= KeyCache.LIMIT:
            key_cache.clear()  # bounded; refills with the keys in use
        key_cache[key_hash] = (now + ttl, environment)
    return environment
