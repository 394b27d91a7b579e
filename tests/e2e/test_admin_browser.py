"""The admin in a real browser (headless Chromium through Playwright) against the real server:
log in, enrol an organisation, watch a burst wait in the buffer, cancel a buffered run, watch it land
CANCELED. Screenshots go to a temporary folder, or to docs/ with UPDATE_SCREENSHOTS=1."""

import json
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import pytest
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import User
from django.db import connections

from runs.models import RunStatus, TaskRun
from tests.factories import EnvironmentFactory
from tests.server import ROOT, running_server, start_manage

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def browser(monkeypatch):
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are still
    # plain synchronous ones, which Django would otherwise refuse.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    if not os.path.exists(CHROMIUM):
        pytest.skip("Chromium is missing: `apt-get install chromium` (CI installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        # The ORM calls made while Playwright's loop ran used a connection of that context: close it
        # there, or the test database cannot be dropped at the end of the session.
        connections.close_all()
        browser.close()


def trigger(base_url: str, key: str, i: int) -> dict:
    request = urllib.request.Request(
        f"{base_url}/api/v1/tasks/hello-world/trigger",
        data=json.dumps(
            {"payload": json.dumps({"json": {"i": i}}), "options": {"payloadType": "application/super+json"}}
        ).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as response:
        return {"id": json.load(response)["id"], "buffered": response.headers.get("x-mollifier") == "buffered"}


def test_operator_enrols_watches_and_cancels_in_the_browser(browser):
    shots = ROOT / "docs" if os.environ.get("UPDATE_SCREENSHOTS") == "1" else Path(tempfile.mkdtemp())
    operator = User.objects.create_superuser("operator", "op@example.com")
    operator.password = make_password("correct horse battery", hasher="pbkdf2_sha256")  # the server's hasher
    operator.save()
    environment = EnvironmentFactory()
    organization = environment.organization
    gate = {
        "MOLLIFIER_ENABLED": "1",
        "MOLLIFIER_TRIP_THRESHOLD": "5",
        "MOLLIFIER_TRIP_WINDOW_MS": "60000",
        "MOLLIFIER_HOLD_MS": "60000",
        "TRIGGER_AUTH_CACHE_SECONDS": "0",
    }
    # The admin over plain HTTP on loopback, no TLS proxy: turn off the HTTPS-only defaults of DEBUG=0.
    plain_http = {"SECURE_SSL_REDIRECT": "0", "SESSION_COOKIE_SECURE": "0", "CSRF_COOKIE_SECURE": "0"}
    with running_server(**gate, **plain_http) as base_url:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{base_url}/admin/login/")
        page.fill("#id_username", "operator")
        page.fill("#id_password", "correct horse battery")
        page.click("input[type=submit]")
        page.wait_for_selector("#site-name")
        assert page.url.endswith("/admin/")

        page.goto(f"{base_url}/admin/runs/organization/{organization.pk}/change/")
        page.check("#id_mollifier_enabled")
        page.click("input[name=_save]")
        assert "was changed successfully" in page.inner_text("ul.messagelist")

        runs = [trigger(base_url, environment.secret_key, i) for i in range(12)]
        buffered = [run["id"] for run in runs if run["buffered"]]
        assert len(buffered) == 7

        page.goto(f"{base_url}/admin/runs/taskrun/")
        table = page.inner_text("#result_list")
        assert all(run_id in table for run_id in buffered)  # one list: both stores
        assert "7 waiting in the buffer + 5 in Postgres" in page.inner_text("#run-counts")
        page.screenshot(path=str(shots / "admin-changelist.png"), full_page=True)

        page.goto(f"{base_url}/admin/mollifier/dashboard/")
        assert page.inner_text("#waiting") == "7"
        page.screenshot(path=str(shots / "admin-dashboard.png"), full_page=True)

        victim = buffered[0]
        page.goto(f"{base_url}/admin/runs/taskrun/buffered/{organization.pk}/{victim}/")
        page.click("#cancel-run")
        assert f"Cancelled {victim}" in page.inner_text("ul.messagelist")
        assert page.inner_text("#status") == "CANCELED"

        drainer = start_manage("mollifier_drain", "--once")
        assert drainer.wait(60) == 0
        page.goto(f"{base_url}/admin/runs/taskrun/buffered/{organization.pk}/{victim}/")  # now a row: redirected
        assert f"/admin/runs/taskrun/{victim.removeprefix('run_')}/change/" in page.url
        assert "Canceled" in page.content()  # the row page shows the status label
        page.goto(f"{base_url}/admin/mollifier/dashboard/")
        assert "The buffer is empty" in page.content()
    assert TaskRun.objects.get(id=victim.removeprefix("run_")).status == RunStatus.CANCELED
    assert TaskRun.objects.filter(environment=environment).count() == 12
