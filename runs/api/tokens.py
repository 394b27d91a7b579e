"""The ``x-trigger-jwt`` public access token sent with trigger and batch answers.

The SDK returns it to the caller as ``publicAccessToken`` and does not verify it. Without it, a key
the SDK believes cannot sign makes ``tasks.trigger`` throw after the run was created, so it is always
sent. Signed HS256 with the caller's own secret key, like the official server's.
"""

import hashlib
import hmac
import json
import time

from jwt.utils import base64url_encode

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
    # The token PyJWT would make, signed here: PyJWT re-examines the key on every call (is it PEM,
    # SSH, DER?), which cost more than the signature, once per trigger.
    signing_input = _HEADER + b"." + base64url_encode(json.dumps(claims, separators=(",", ":")).encode())
    signature = hmac.new(secret_key.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + base64url_encode(signature)).decode()


_HEADER = base64url_encode(b'{"alg":"HS256","typ":"JWT"}')
