"""Production settings: DEBUG off unless asked for, HTTPS from the environment, and a clean
``manage.py check --deploy`` with the variables deploy/production.env.example documents. Each runs
the settings in a process of its own, as a deployment would (they are read once, at import)."""

import http.client
import json
import os
import secrets
import subprocess
import sys
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from tests.factories import EnvironmentFactory
from tests.server import ROOT, database_url, running_server
from trigger_project.env import env_pair

PRODUCTION_ENV = ROOT / "deploy" / "production.env.example"


def production_env(tmp_path, **overrides: str) -> dict[str, str]:
    """The documented production variables, with a real key and this machine's stores."""
    env = {k: v for k, v in os.environ.items() if k != "DEBUG" and not k.startswith(("SECURE_", "SESSION_", "CSRF_"))}
    for line in PRODUCTION_ENV.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            env[name.strip()] = value.strip()
    env.update(
        DJANGO_SETTINGS_MODULE="trigger_project.settings",
        SECRET_KEY=secrets.token_urlsafe(50),
        DATABASE_URL=database_url(),
        REDIS_URL=settings.REDIS_URL,  # the check reads its maxmemory-policy (mollifier.W001)
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path),
    )
    env.update(overrides)
    return env


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_check_deploy_is_clean_with_the_documented_production_settings(tmp_path):
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout, result.stdout + result.stderr


def test_check_deploy_still_catches_a_deployment_that_forgets_https(tmp_path):
    """The clean run above is not a silenced one."""
    env = production_env(tmp_path, SECURE_SSL_REDIRECT="0", SECURE_HSTS_SECONDS="0")
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode != 0
    assert "security.W004" in result.stderr and "security.W008" in result.stderr


def test_debug_is_off_by_default_and_then_a_secret_key_is_required(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY"}}
    env.update(
        DJANGO_SETTINGS_MODULE="trigger_project.settings", DATABASE_URL=database_url(), REDIS_URL=settings.REDIS_URL
    )
    show = "from django.conf import settings as s; print(s.DEBUG, s.SECURE_SSL_REDIRECT, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE)"

    refused = manage("shell", "--no-imports", "-c", show, env=env)
    assert refused.returncode != 0
    assert "Set the SECRET_KEY environment variable" in refused.stderr and "DEBUG=1" in refused.stderr

    production = manage("shell", "--no-imports", "-c", show, env={**env, "SECRET_KEY": secrets.token_urlsafe(50)})
    assert production.stdout.split() == ["False", "True", "True", "True"], production.stderr

    development = manage("shell", "--no-imports", "-c", show, env={**env, "DEBUG": "1"})
    assert development.stdout.split() == ["True", "False", "False", "False"], development.stderr


@pytest.mark.parametrize("value", ["HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_PROTO,", "a,b,c"])
def test_a_malformed_secure_proxy_ssl_header_is_refused(monkeypatch, value):
    monkeypatch.setenv("SECURE_PROXY_SSL_HEADER", value)
    with pytest.raises(ImproperlyConfigured, match="SECURE_PROXY_SSL_HEADER"):
        env_pair("SECURE_PROXY_SSL_HEADER")


def request(base_url: str, method: str, path: str, *, headers: dict | None = None, body: bytes | None = None):
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_production_defaults_redirect_browsers_but_not_the_api_or_health_checks():
    """DEBUG off, behind a TLS proxy (SECURE_PROXY_SSL_HEADER) with HSTS: the admin over plain HTTP
    is redirected to HTTPS; health checks, metrics and the SDK's calls are answered on plain HTTP."""
    key = EnvironmentFactory().secret_key
    tls = {"SECURE_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO,https", "SECURE_HSTS_SECONDS": "3600"}
    with running_server(**tls) as base_url:  # running_server itself waits on plain-HTTP /healthz
        status, headers, _ = request(base_url, "GET", "/admin/login/")
        assert status == 301 and headers["Location"] == f"https://{urlsplit(base_url).netloc}/admin/login/"
        assert request(base_url, "GET", "/healthz")[0] == 200
        assert request(base_url, "GET", "/metrics")[0] == 200
        body = json.dumps({"payload": json.dumps({"json": 1}), "options": {"payloadType": "application/super+json"}})
        status, _, answer = request(
            base_url,
            "POST",
            "/api/v1/tasks/hello-world/trigger",
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            body=body.encode(),
        )
        assert status == 200, answer
        run_id = json.loads(answer)["id"]
        assert request(base_url, "GET", f"/api/v3/runs/{run_id}", headers={"Authorization": f"Bearer {key}"})[0] == 200

        # What the TLS proxy forwards: HTTPS as far as Django knows, so HSTS and secure cookies.
        status, headers, _ = request(base_url, "GET", "/admin/login/", headers={"X-Forwarded-Proto": "https"})
        assert status == 200
        assert headers["Strict-Transport-Security"] == "max-age=3600"
        assert "; secure" in headers["Set-Cookie"].lower()
