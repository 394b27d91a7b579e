"""Another environment's runs and batches do not exist for this caller, whatever the endpoint."""

import hashlib

import pytest

from runs.models import RunStatus, RuntimeEnvironment, TaskRun
from tests.helpers import trigger

pytestmark = pytest.mark.django_db


@pytest.fixture
def foreign_run(other_api):
    return trigger(other_api, payload={"secret": True}).json()["id"]


def test_retrieve_of_another_environments_run_is_404(api, foreign_run):
    response = api.get(f"/api/v3/runs/{foreign_run}")

    assert response.status_code == 404
    assert response.json() == {"error": "Run not found"}
    assert response.headers["x-should-retry"] == "true"


def test_cancel_of_another_environments_run_is_404_and_changes_nothing(api, foreign_run):
    response = api.post(f"/api/v2/runs/{foreign_run}/cancel")

    assert response.status_code == 404
    assert TaskRun.objects.get().status == RunStatus.QUEUED


def test_listing_never_shows_another_environments_runs(api, other_api, foreign_run):
    own = trigger(api, payload=1).json()["id"]

    assert [run["id"] for run in api.get("/api/v1/runs").json()["data"]] == [own]


def test_another_environments_batch_is_404(api, other_api):
    batch = other_api.post("/api/v3/batches", {"runCount": 1}, format="json").json()["id"]

    assert api.get(f"/api/v2/batches/{batch}").status_code == 404
    items = api.generic(
        "POST", f"/api/v3/batches/{batch}/items", b'{"index":0,"task":"t"}\n', content_type="application/x-ndjson"
    )
    assert items.status_code == 404
    assert TaskRun.objects.count() == 0


def test_project_listing_needs_the_keys_own_project(api, other_environment, environment):
    own = api.get(f"/api/v1/projects/{environment.project.external_ref}/runs")
    other = api.get(f"/api/v1/projects/{other_environment.project.external_ref}/runs")

    assert own.status_code == 200
    assert other.status_code == 404


def test_secret_keys_are_stored_hashed(environment):
    row = RuntimeEnvironment.objects.filter(pk=environment.pk).values().get()

    assert environment.secret_key not in [str(value) for value in row.values()]
    assert row["api_key_hash"] == hashlib.sha256(environment.secret_key.encode()).hexdigest()
    assert environment.secret_key.startswith(row["api_key_prefix"])
