"""The operator surfaces through Django's test client: admin pages, actions, /metrics, commands."""

import io
import time

import psycopg
import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client

from mollifier import buffer, rate
from mollifier.clock import now_ms
from mollifier.exceptions import RateWaitTooLong, SinkUnavailable
from runs.models import Organization, RunStatus, TaskRun
from runs.services.materialise import TaskRunSink
from tests.buffering import fill_buffer, pin_in_open_transaction
from tests.conftest import client_for
from tests.factories import EnvironmentFactory
from tests.helpers import trigger
from tests.server import database_url
from trigger_project.postgres import breaker as postgres_breaker

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client():
    user = User.objects.create_superuser("admin", "admin@example.com", "pw")
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def viewer_client():
    """Staff who may view runs but not change them."""
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_taskrun", "view_dashboard", "view_organization"])
    )
    client = Client()
    client.force_login(user)
    return client


def test_the_admin_needs_a_staff_login():
    for url in ["/admin/", "/admin/runs/taskrun/", "/admin/mollifier/dashboard/"]:
        response = Client().get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_the_enrolment_toggle_keeps_other_flags(admin_client, environment):
    organization = environment.organization
    organization.feature_flags = {"other": "kept"}
    organization.save()

    response = admin_client.post(
        f"/admin/runs/organization/{organization.pk}/change/",
        {
            "slug": organization.slug,
            "title": organization.title,
            "mollifier_enabled": "on",
            "feature_flags": '{"other": "kept"}',
        },
    )

    assert response.status_code == 302
    organization.refresh_from_db()
    assert organization.feature_flags == {"other": "kept", "mollifierEnabled": True}
    page = admin_client.get(f"/admin/runs/organization/{organization.pk}/change/").content.decode()
    assert 'name="mollifier_enabled"' in page and "checked" in page


def test_bulk_enable_and_disable(admin_client):
    orgs = [EnvironmentFactory().organization for _ in range(3)]
    ids = [str(o.pk) for o in orgs]

    admin_client.post("/admin/runs/organization/", {"action": "enable_mollifier", "_selected_action": ids})
    assert all(o.feature_flags.get("mollifierEnabled") is True for o in Organization.objects.filter(pk__in=ids))
    admin_client.post("/admin/runs/organization/", {"action": "disable_mollifier", "_selected_action": ids[:1]})
    assert Organization.objects.get(pk=ids[0]).feature_flags["mollifierEnabled"] is False


def test_the_organisation_list_shows_buffer_depth(admin_client):
    environment = EnvironmentFactory()
    fill_buffer(environment, 4)

    page = admin_client.get("/admin/runs/organization/").content.decode()

    assert ">4<" in page


def test_the_run_list_shows_both_stores_and_filters_where(admin_client, enrolled):
    api = client_for(enrolled)
    responses = [trigger(api, payload=i, tags=["vip"] if i == 7 else []) for i in range(8)]
    buffered = [r.json()["id"] for r in responses if r.headers.get("x-mollifier")]
    direct = [r.json()["id"] for r in responses if not r.headers.get("x-mollifier")]

    everything = admin_client.get("/admin/runs/taskrun/").content.decode()
    only_buffered = admin_client.get("/admin/runs/taskrun/?where=buffered").content.decode()
    by_tag = admin_client.get("/admin/runs/taskrun/?q=vip").content.decode()
    by_id = admin_client.get(f"/admin/runs/taskrun/?q={direct[0]}").content.decode()

    assert all(run_id in everything for run_id in buffered + direct)
    assert all(run_id in only_buffered for run_id in buffered) and direct[0] not in only_buffered
    assert buffered[-1] in by_tag and buffered[0] not in by_tag
    assert direct[0] in by_id and direct[1] not in by_id


def test_a_buffered_run_has_a_detail_page_and_can_be_cancelled(admin_client, enrolled):
    api = client_for(enrolled)
    run_id = [trigger(api, payload=i).json()["id"] for i in range(6)][-1]
    org = str(enrolled.organization_id)

    page = admin_client.get(f"/admin/runs/taskrun/buffered/{org}/{run_id}/").content.decode()
    response = admin_client.post(f"/admin/runs/taskrun/buffered/{org}/{run_id}/cancel/")

    assert run_id in page and "Snapshot" in page and "attempts" in page
    assert response.status_code == 302
    assert api.get(f"/api/v3/runs/{run_id}").json()["status"] == "CANCELED"


def test_changing_actions_need_the_change_permission(viewer_client, enrolled):
    api = client_for(enrolled)
    run_id = [trigger(api, payload=i).json()["id"] for i in range(6)][-1]
    org, env = str(enrolled.organization_id), str(enrolled.pk)

    assert viewer_client.get(f"/admin/runs/taskrun/buffered/{org}/{run_id}/").status_code == 200
    assert viewer_client.post(f"/admin/runs/taskrun/buffered/{org}/{run_id}/cancel/").status_code == 403
    assert viewer_client.post(f"/admin/mollifier/dashboard/drain/{org}/{env}/").status_code == 403
    assert api.get(f"/api/v3/runs/{run_id}").json()["status"] == "QUEUED"


def test_row_actions_cancel_and_reset(admin_client, environment):
    api = client_for(environment)
    first = trigger(api, payload=1, idempotencyKey="k").json()["id"].removeprefix("run_")

    admin_client.post("/admin/runs/taskrun/", {"action": "reset_idempotency_keys", "_selected_action": [first]})
    admin_client.post("/admin/runs/taskrun/", {"action": "cancel_runs", "_selected_action": [first]})

    run = TaskRun.objects.get(id=first)
    assert run.idempotency_key is None and run.status == RunStatus.CANCELED


def test_bulk_cancel_counts_only_the_runs_it_cancelled(admin_client, environment):
    api = client_for(environment)
    ids = [trigger(api, payload=i).json()["id"] for i in range(2)]
    assert api.post(f"/api/v2/runs/{ids[0]}/cancel").status_code == 200
    selected = [run_id.removeprefix("run_") for run_id in ids]

    page = admin_client.post(
        "/admin/runs/taskrun/", {"action": "cancel_runs", "_selected_action": selected}, follow=True
    ).content.decode()

    assert "Cancelled 1 run(s); 1 had already finished or been cancelled, left as they were." in page
    assert set(TaskRun.objects.values_list("status", flat=True)) == {RunStatus.CANCELED}


def test_the_dashboard_shows_depth_charts_and_drains_now(admin_client, enrolled):
    api = client_for(enrolled)
    [trigger(api, payload=i) for i in range(12)]  # 7 buffered

    page = admin_client.get("/admin/mollifier/dashboard/").content.decode()
    response = admin_client.post(f"/admin/mollifier/dashboard/drain/{enrolled.organization_id}/{enrolled.pk}/")

    assert 'id="waiting">7<' in page and "<svg" in page and str(enrolled) in page
    assert "mollified" in page and "Drain this environment now" in page
    assert response.status_code == 302
    assert buffer.buffered_count(str(enrolled.organization_id)) == 0
    assert TaskRun.objects.count() == 12


def test_drain_now_drains_past_one_round_and_says_what_is_left(admin_client, enrolled, settings, monkeypatch):
    """A backlog of several rounds (rounds of 2 here) is drained whole when the rate allows it;
    at a rate too low for that, what is still ready is named, left to the drainers."""
    settings.MOLLIFIER = {**settings.MOLLIFIER, "DRAIN_BATCH_SIZE": 2, "DRAIN_MAX_ROWS_PER_SEC": 100_000}
    api = client_for(enrolled)
    [trigger(api, payload=i) for i in range(12)]  # 7 buffered
    org, env = str(enrolled.organization_id), str(enrolled.pk)

    page = admin_client.post(f"/admin/mollifier/dashboard/drain/{org}/{env}/", follow=True).content.decode()

    assert "Drained 7 run(s) of that environment (7 inserted): nothing of it is left ready." in page
    assert buffer.buffered_count(org) == 0 and TaskRun.objects.count() == 12

    settings.MOLLIFIER = {**settings.MOLLIFIER, "DRAIN_MAX_ROWS_PER_SEC": 1, "DRAIN_RATE_MODE": "fixed"}
    monkeypatch.setattr("mollifier.drainer.DRAIN_NOW_SECONDS", 0.5)
    [trigger(api, payload=i) for i in range(30)]  # still tripped: all 30 buffered

    page = admin_client.post(f"/admin/mollifier/dashboard/drain/{org}/{env}/", follow=True).content.decode()

    left = buffer.buffered_count(org)
    assert 0 < left < 30
    assert f"Drained {30 - left} run(s) of that environment ({30 - left} inserted) in " in page
    assert f"(0.5 s at most, under the drain&#x27;s rate cap); {left} still ready, left to the drainers." in page


def test_drain_now_does_not_wait_for_the_rate_past_its_time(admin_client, enrolled, settings, monkeypatch):
    """It runs inside a web request: a round the shared rate grants only after its time is not
    waited for (at a low rate, that wait could reach the server's own timeout)."""
    settings.MOLLIFIER = {**settings.MOLLIFIER, "DRAIN_MAX_ROWS_PER_SEC": 1, "DRAIN_RATE_MODE": "fixed"}
    monkeypatch.setattr("mollifier.drainer.DRAIN_NOW_SECONDS", 0.5)
    api = client_for(enrolled)
    [trigger(api, payload=i) for i in range(8)]  # 3 buffered
    org, env = str(enrolled.organization_id), str(enrolled.pk)
    with pytest.raises(RateWaitTooLong):  # the bucket taken dry: its next row is a second away
        while True:
            rate.reserve(1_000, clock=now_ms, wait_until=time.monotonic())

    page = admin_client.post(f"/admin/mollifier/dashboard/drain/{org}/{env}/", follow=True).content.decode()

    assert buffer.buffered_count(org) == 3 and TaskRun.objects.count() == 5
    assert "Nothing drained: the drain&#x27;s rate cap granted no round within 0.5 s" in page
    assert "3 still ready, left to the drainers." in page


def test_metrics_in_prometheus_format(enrolled, settings):
    api = client_for(enrolled)
    [trigger(api, payload=i) for i in range(7)]

    body = Client().get("/metrics").content.decode()

    assert 'mollifier_gate_decisions_total{decision="mollify",reason="per_env_rate"}' in body
    assert "mollifier_buffer_depth 2.0" in body
    assert "mollifier_buffer_oldest_age_seconds" in body
    settings.METRICS_TOKEN = "s3cret"
    assert Client().get("/metrics").status_code == 401
    assert Client().get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_metrics_show_the_breaker_bytes_and_memory(enrolled):
    api = client_for(enrolled)
    [trigger(api, payload=i) for i in range(7)]

    body = Client().get("/metrics").content.decode()

    assert "mollifier_redis_breaker_state 0.0" in body
    assert "mollifier_redis_breaker_opens_total" in body and "mollifier_redis_breaker_rejected_total" in body
    held = buffer.buffered_bytes(str(enrolled.organization_id))
    assert held > 0 and f"mollifier_buffer_bytes {float(held)}" in body
    assert "mollifier_redis_memory_used_ratio" in body and "mollifier_redis_memory_guard 0.0" in body


def test_the_dashboard_shows_the_redis_breaker_and_memory(admin_client, dead_redis):
    page = admin_client.get("/admin/mollifier/dashboard/").content.decode()
    assert 'id="breaker">closed<' in page
    assert 'id="redis-memory">unknown<' in page and "did not answer" in page

    for _ in range(3):  # refused connections open the breaker
        admin_client.get("/admin/mollifier/dashboard/")
    page = admin_client.get("/admin/mollifier/dashboard/").content.decode()
    assert 'id="breaker">open<' in page


def test_the_dashboard_counts_the_postgres_breakers_openings(admin_client):
    """While the web tier's Postgres breaker is open the admin cannot render (it needs Postgres);
    afterwards its card says how often it opened."""
    page = admin_client.get("/admin/mollifier/dashboard/").content.decode()
    assert 'id="postgres-breaker">closed<' in page
    before = int(page.split('id="postgres-breaker">closed</strong>')[1].split("opened ", 1)[1].split(" ", 1)[0])

    postgres_breaker.enable()
    try:
        gate = postgres_breaker.for_database("default", "test", prober=lambda: None, probe_budget_s=60)
        gate.failed(False, OSError("no answer"))  # opens
        gate.succeeded(True)  # a probe answered: closed again
    finally:
        postgres_breaker.disable()
    page = admin_client.get("/admin/mollifier/dashboard/").content.decode()
    assert 'id="postgres-breaker">closed<' in page
    assert f"opened {before + 1} time" in page


def test_reset_idempotency_command(environment):
    api = client_for(environment)
    trigger(api, payload=1, idempotencyKey="k")
    spec = f"{environment.organization.slug}/{environment.project.slug}/{environment.slug}"
    out = io.StringIO()

    call_command("mollifier_reset_idempotency", "--env", spec, "--task", "hello-world", "--key", "k", stdout=out)

    assert "released from 1 run in Postgres" in out.getvalue()
    with pytest.raises(CommandError, match="No runs found"):
        call_command("mollifier_reset_idempotency", "--env", spec, "--task", "hello-world", "--key", "k")


def test_buffered_pages_and_actions_say_the_buffer_did_not_answer(admin_client, environment, silent_redis):
    """Redis refused or hung: each page or action that needs the buffer is back on the run list with
    that said (it was a 500), and the dashboard's "drain now" says nothing was drained."""
    org, env = str(environment.organization_id), str(environment.pk)
    run_id = "run_cm0000000000000000000000"  # whichever: the buffer cannot be asked

    answers = [
        admin_client.get(f"/admin/runs/taskrun/buffered/{org}/{run_id}/"),
        admin_client.post(f"/admin/runs/taskrun/buffered/{org}/{run_id}/cancel/"),
        admin_client.post(f"/admin/runs/taskrun/buffered/{org}/{run_id}/reset-key/"),
        admin_client.post("/admin/runs/taskrun/", {"action": "cancel_runs", "_selected_action": [run_id]}),
        admin_client.post("/admin/runs/taskrun/", {"action": "reset_idempotency_keys", "_selected_action": [run_id]}),
    ]
    page = admin_client.get("/admin/runs/taskrun/").content.decode()  # shows the messages
    drained = admin_client.post(f"/admin/mollifier/dashboard/drain/{org}/{env}/", follow=True)

    for answer in answers:
        assert (answer.status_code, answer["Location"]) == (302, "/admin/runs/taskrun/")
    assert page.count("Redis did not answer. Try again shortly.") == len(answers)
    assert "Nothing drained: the buffer&#x27;s Redis did not answer" in drained.content.decode()


@pytest.mark.django_db(transaction=True)
def test_an_admin_page_says_postgres_did_not_answer_instead_of_a_bare_500(admin_client):
    """The runs table locked past the statement timeout (a stand-in for a slow or hung Postgres)."""
    with psycopg.connect(database_url()) as locker:
        locker.execute("LOCK TABLE runs_taskrun IN ACCESS EXCLUSIVE MODE")
        with connection.cursor() as cursor:
            cursor.execute("SET statement_timeout = 300")
        try:
            page = admin_client.get("/admin/runs/taskrun/")
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET statement_timeout")

    assert page.status_code == 503 and b"Postgres did not answer" in page.content
    assert admin_client.get("/admin/runs/taskrun/").status_code == 200  # the lock is gone


class UnreachableSink(TaskRunSink):
    """Postgres refuses the drainer's writes (the admin's own requests still reach it)."""

    def write(self, entries, *, pin, last_resort=False):
        raise SinkUnavailable("connection refused")


def test_drain_now_says_postgres_could_not_be_reached_and_keeps_the_runs(admin_client, enrolled, settings):
    api = client_for(enrolled)
    [trigger(api, payload=i) for i in range(12)]  # 7 buffered
    org = str(enrolled.organization_id)
    settings.MOLLIFIER = {**settings.MOLLIFIER, "SINK": f"{__name__}.UnreachableSink"}

    page = admin_client.post(f"/admin/mollifier/dashboard/drain/{org}/{enrolled.pk}/", follow=True)

    assert "Nothing drained: Postgres could not be reached" in page.content.decode()
    assert buffer.buffered_count(org) == 7 and TaskRun.objects.count() == 5  # given back, not lost


class SettleRefused(TaskRunSink):
    """Postgres cannot be reached to settle a pin (the admin's own pages still reach it)."""

    def settle(self, pins, *, lapsed=False):
        raise SinkUnavailable("connection refused")


@pytest.mark.django_db(transaction=True)
def test_cancelling_a_pinned_run_whose_pin_cannot_be_settled_says_retry(admin_client, environment, settings):
    """The run is pinned to a drainer's transaction and Postgres cannot be asked about it: the
    action and the run's own page say so, and the operator retries (each was a 500)."""
    (run_id,) = fill_buffer(environment, 1)
    org, env = str(environment.organization_id), str(environment.pk)
    entries = buffer.pop(org_id=org, env_id=env, limit=1, lease_ms=60_000, now_ms=now_ms()).entries
    running = pin_in_open_transaction(entries)
    settings.MOLLIFIER = {**settings.MOLLIFIER, "SINK": f"{__name__}.SettleRefused"}

    action = admin_client.post(
        "/admin/runs/taskrun/", {"action": "cancel_runs", "_selected_action": [run_id.removeprefix("run_")]}
    )
    listed = admin_client.get("/admin/runs/taskrun/").content.decode()
    own = admin_client.post(f"/admin/runs/taskrun/buffered/{org}/{run_id}/cancel/", follow=True)
    running.close()

    assert action.status_code == 302 and "1 could not be cancelled right now, retry." in listed
    assert "Postgres did not answer about the drain writing this run." in own.content.decode()
