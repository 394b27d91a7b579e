"""Reading configuration from environment variables, with the failure spelled out."""

import os

from django.core.exceptions import ImproperlyConfigured


def env(name: str, default: str | None = None) -> str:
    if (value := os.environ.get(name, default)) is None:
        raise ImproperlyConfigured(f"Set the {name} environment variable.")
    return value


def env_int(name: str, default: int) -> int:
    raw = env(name, str(default))
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}.") from None


def env_bool(name: str, default: bool) -> bool:
    raw = env(name, "1" if default else "0").strip().lower()
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off", ""}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {raw!r}.")


def env_pair(name: str) -> tuple[str, str] | None:
    """``A,B`` as a pair (Django's SECURE_PROXY_SSL_HEADER shape); unset or empty is None."""
    raw = env(name, "").strip()
    if not raw:
        return None
    parts = [part.strip() for part in raw.split(",")]
    if len(parts) != 2 or not all(parts):
        raise ImproperlyConfigured(f"{name} must be two comma-separated values (HEADER,value), got {raw!r}.")
    return parts[0], parts[1]
