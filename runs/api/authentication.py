"""``Authorization: Bearer <secret key>`` → the environment the key belongs to.

Keys are compared by SHA-256 only; the clear key is never stored. No sessions or CSRF are involved
on the API (the SDK sends no cookies).
"""

from dataclasses import dataclass

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
        key = key.strip()
        try:
            environment = RuntimeEnvironment.objects.select_related("organization", "project").get(
                api_key_hash=RuntimeEnvironment.hash_api_key(key)
            )
        except RuntimeEnvironment.DoesNotExist:
            raise exceptions.AuthenticationFailed("Invalid API Key") from None
        return EnvironmentPrincipal(environment), key

    def authenticate_header(self, request):
        return self.keyword  # makes DRF answer 401 rather than 403
