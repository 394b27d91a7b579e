"""The admin's task-run list over both stores: paging with ``?p=`` shows every buffered and every
written run exactly once, each filter and the search apply to both, actions work on rows of either
store, and the header counts each store."""

import re

import pytest
from django.contrib.auth.models import User
from django.test import Client

from mollifier import buffer
from runs.models import RunStatus, TaskRun
from tests.buffering import fill_buffer
from tests.factories import EnvironmentFactory, TaskRunFactory

pytestmark = pytest.mark.django_db

RUN_LINK = re.compile(r'<a href="/admin/runs/taskrun/(?:buffered/\d+/(run_\w+)|(\w+)/change/)')


@pytest.fixture
def admin_client():
    client = Client()
    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))
    return client


def listed(admin_client, query: str = "") -> list[str]:
    """Every run id on every page of the list (following ?p= until the last page)."""
    seen, page = [], 1
    while True:
        response = admin_client.get(f"/admin/runs/taskrun/?p={page}{query}")
        assert response.status_code == 200
        html = response.content.decode()
        ids = [buffered or f"run_{row}" for buffered, row in RUN_LINK.findall(html)]
        seen += ids
        if f"?p={page + 1}" not in html and f"p={page + 1}&" not in html:
            return seen
        page += 1


def test_paging_shows_every_buffered_and_written_run_exactly_once(admin_client, settings):
    environment, other = EnvironmentFactory(), EnvironmentFactory()
    buffered = fill_buffer(environment, 230) + fill_buffer(other, 40)
    written = [run.friendly_id for run in TaskRunFactory.create_batch(60, environment=environment)]

    seen = listed(admin_client)

    assert sorted(seen) == sorted(buffered + written)
    page = admin_client.get("/admin/runs/taskrun/").content.decode()
    assert "270 waiting in the buffer + 60 in Postgres" in page
    assert "330 task runs" in page


def test_filters_and_search_apply_to_both_stores(admin_client):
    environment, other = EnvironmentFactory(), EnvironmentFactory()
    buffered_a = fill_buffer(environment, 3, task="alpha", tags=["vip"])
    buffered_b = fill_buffer(environment, 2, task="beta")
    written_a = TaskRunFactory(environment=environment, task_identifier="alpha", tags=["vip"]).friendly_id
    written_b = TaskRunFactory(environment=other, task_identifier="beta", status=RunStatus.CANCELED).friendly_id
    materialised = TaskRunFactory(environment=environment, task_identifier="beta")
    TaskRun.objects.filter(pk=materialised.pk).update(
        buffered_at=materialised.created_at, materialised_at=materialised.created_at
    )

    assert sorted(listed(admin_client, "&task=alpha")) == sorted(buffered_a + [written_a])
    assert sorted(listed(admin_client, "&tag=vip")) == sorted(buffered_a + [written_a])
    assert sorted(listed(admin_client, f"&environment={other.pk}")) == [written_b]
    assert sorted(listed(admin_client, "&status=CANCELED")) == [written_b]
    assert sorted(listed(admin_client, "&where=buffered")) == sorted(buffered_a + buffered_b)
    assert sorted(listed(admin_client, "&where=materialised")) == [materialised.friendly_id]
    assert listed(admin_client, f"&q={buffered_b[0]}") == [buffered_b[0]]
    assert sorted(listed(admin_client, "&q=vip")) == sorted(buffered_a + [written_a])
    assert sorted(listed(admin_client, "&task=beta&where=direct")) == sorted([written_b])


def test_being_drained_shows_as_such(admin_client):
    environment = EnvironmentFactory()
    run_ids = fill_buffer(environment, 4)
    buffer.pop(
        org_id=str(environment.organization_id), env_id=str(environment.pk), limit=1, lease_ms=60_000, now_ms=10**13
    )

    draining = listed(admin_client, "&where=draining")

    assert draining == [min(run_ids)]  # the oldest ready: one millisecond, so the smallest id
    assert "being written by a drainer" in admin_client.get("/admin/runs/taskrun/").content.decode()


def test_actions_work_on_selected_rows_of_either_store(admin_client):
    environment = EnvironmentFactory()
    (buffered,) = fill_buffer(environment, 1, idempotencyKey="k1")
    row = TaskRunFactory(environment=environment, idempotency_key="k2")

    admin_client.post(
        "/admin/runs/taskrun/",
        {"action": "reset_idempotency_keys", "_selected_action": [buffered.removeprefix("run_"), row.pk]},
    )
    admin_client.post(
        "/admin/runs/taskrun/", {"action": "cancel_runs", "_selected_action": [buffered.removeprefix("run_"), row.pk]}
    )

    entry = buffer.get(org_id=str(environment.organization_id), run_id=buffered)
    assert entry.idempotency_key is None and entry.cancelled_at_ms is not None
    row.refresh_from_db()
    assert row.idempotency_key is None and row.status == RunStatus.CANCELED


def test_the_list_still_answers_when_the_buffer_does_not(admin_client, dead_redis):
    environment = EnvironmentFactory()
    row = TaskRunFactory(environment=environment)

    page = admin_client.get("/admin/runs/taskrun/").content.decode()

    assert row.friendly_id in page and "did not answer" in page
