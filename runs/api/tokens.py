"""The ``x-trigger-jwt`` public access token sent with trigger and batch answers.

The SDK returns it to the caller as ``publicAccessToken`` and does not verify it. Without it, a key
the SDK believes cannot sign makes ``tasks.trigger`` throw after the run was created, so it is always
sent. Signed HS256 with the caller's own secret key, like the official server's.
"""

import time

import jwt

from runs.models import RuntimeEnvironment

TOKEN_LIFETIME_SECONDS = 3600


def public_token(*, secret_key: str, environment: RuntimeEnvironment, scopes: list[str]) -> str:
    now = int(time.time())
    claims = {
        "sub": str(environment.pk),
        "pub": True,
        "scopes": scopes,
        "iat": now,
        "exp": now + TOKEN_LIFETIME_SECONDS,
        "iss": "https://id.trigger.dev",
        "aud": "https://api.trigger.dev",
    }
    return jwt.encode(claims, secret_key, algorithm="HS256")
