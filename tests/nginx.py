"""nginx in front of the real server, from the shipped deploy/nginx/mollifier.conf.template.

nginx runs in the foreground from a temporary prefix of its own (config, pid, logs and buffers
there; nothing under /etc or /var), so any user can run it and the test stops it.
"""

import getpass
import os
import re
import shutil
import string
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings

from tests.server import ROOT, free_port

TEMPLATE = ROOT / "deploy" / "nginx" / "mollifier.conf.template"


def nginx_binary() -> str:
    """The nginx to run. CI installs it (.ci/run), so there a missing nginx fails instead of skipping."""
    if found := shutil.which("nginx"):
        return found
    if os.path.exists("/usr/sbin/nginx"):  # not on PATH for a user without sbin
        return "/usr/sbin/nginx"
    if os.environ.get("CI"):
        pytest.fail("nginx is missing, and CI must run this test: .ci/run installs it")
    pytest.skip("nginx is missing: `apt-get install nginx` (CI installs it)")


def render_site(**values: str) -> str:
    """The template with its ${NAME} placeholders filled, nginx's own $variables untouched."""
    text = string.Template(TEMPLATE.read_text()).safe_substitute(values)
    directives = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    if left := re.findall(r"\$\{(\w+)\}", directives):
        raise ValueError(f"the nginx template still has placeholders: {left}")
    return text


@contextmanager
def nginx_in_front(upstream_url: str) -> Iterator[str]:
    """Serve ``upstream_url`` (a running_server URL) through nginx on a free loopback port; yields
    nginx's base URL. The body limits are this process's settings, which the server shares."""
    nginx = nginx_binary()
    prefix = Path(tempfile.mkdtemp(prefix="mollifier-nginx-"))
    port = free_port()
    upstream = urlsplit(upstream_url)
    (prefix / "mollifier.conf").write_text(
        render_site(
            NGINX_LISTEN=f"127.0.0.1:{port}",
            GUNICORN_ADDRESS=f"{upstream.hostname}:{upstream.port}",
            TRIGGER_MAX_BODY_BYTES=str(settings.TRIGGER["MAX_BODY_BYTES"]),
            TRIGGER_MAX_BATCH_BODY_BYTES=str(settings.TRIGGER["MAX_BATCH_BODY_BYTES"]),
            PACKETS_MAX_BYTES=str(settings.PACKETS["MAX_BYTES"]),
        )
    )
    # As root nginx would hand its workers to `nobody`, who cannot enter this private prefix.
    user = f"user {getpass.getuser()};" if os.geteuid() == 0 else ""
    temp_paths = "\n".join(
        f"    {kind}_temp_path {prefix / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (prefix / "nginx.conf").write_text(
        f"""{user}
worker_processes 1;
daemon off;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} info;
events {{
    worker_connections 256;
}}
http {{
    default_type application/octet-stream;
    access_log {prefix / "access.log"};
{temp_paths}
    include {prefix / "mollifier.conf"};
}}
"""
    )
    log = open(prefix / "nginx.out", "wb")  # closed below, once nginx has stopped
    process = subprocess.Popen(
        [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"nginx exited:\n{_logs(prefix)}")
            try:
                urllib.request.urlopen(f"{base_url}/healthz", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # nginx answered (for an upstream that is down, with its own 503)
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not answer /healthz within 15 s:\n{_logs(prefix)}") from None
                time.sleep(0.1)
        yield base_url
    finally:
        process.terminate()  # SIGTERM: nginx's fast shutdown
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(prefix, ignore_errors=True)


def _logs(prefix: Path) -> str:
    return "\n".join(
        (prefix / name).read_text(errors="replace") for name in ("nginx.out", "error.log") if (prefix / name).exists()
    )
