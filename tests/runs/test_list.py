from datetime import timedelta

import pytest
from django.utils import timezone

from runs.models import RunStatus, TaskRun
from tests.factories import TaskRunFactory
from tests.helpers import trigger

pytestmark = pytest.mark.django_db


def make_runs(environment, count, **fields):
    base = timezone.now() - timedelta(hours=1)
    return [
        TaskRunFactory(environment=environment, created_at=base + timedelta(seconds=i), **fields) for i in range(count)
    ]


def ids_of(response):
    return [run["id"] for run in response.json()["data"]]


def test_newest_first_with_the_sdk_item_shape(api, environment):
    runs = make_runs(environment, 3)

    response = api.get("/api/v1/runs")

    assert ids_of(response) == [run.friendly_id for run in reversed(runs)]
    item = response.json()["data"][0]
    assert item["env"] == {"id": str(environment.pk), "name": "dev"}
    for required in ["status", "taskIdentifier", "isQueued", "isTest", "createdAt", "updatedAt", "tags", "costInCents"]:
        assert required in item
    assert response.json()["pagination"] == {}


def test_cursor_pagination_walks_every_run_once_and_back(api, environment):
    runs = make_runs(environment, 7)
    # Two runs with the very same trigger time: the id breaks the tie, so neither is lost.
    TaskRun.objects.filter(id=runs[3].id).update(created_at=runs[2].created_at)
    expected = [r.friendly_id for r in sorted(TaskRun.objects.all(), key=lambda r: (r.created_at, r.id), reverse=True)]

    pages, url = [], "/api/v1/runs?page%5Bsize%5D=3"
    while url:
        body = api.get(url).json()
        pages.append([run["id"] for run in body["data"]])
        nxt = body["pagination"].get("next")
        url = f"/api/v1/runs?page%5Bsize%5D=3&page%5Bafter%5D={nxt}" if nxt else None

    assert [len(p) for p in pages] == [3, 3, 1]
    assert sum(pages, []) == expected

    second = api.get(
        f"/api/v1/runs?page%5Bsize%5D=3&page%5Bafter%5D={api.get('/api/v1/runs?page%5Bsize%5D=3').json()['pagination']['next']}"
    ).json()
    back = api.get(f"/api/v1/runs?page%5Bsize%5D=3&page%5Bbefore%5D={second['pagination']['previous']}").json()
    assert [run["id"] for run in back["data"]] == pages[0]
    assert "previous" not in back["pagination"]
    # The SDK's getPreviousPage() after a getNextPage() sends the earlier page[after] too: before wins.
    both = f"page%5Bafter%5D={second['pagination']['next']}&page%5Bbefore%5D={second['pagination']['previous']}"
    assert [run["id"] for run in api.get(f"/api/v1/runs?page%5Bsize%5D=3&{both}").json()["data"]] == pages[0]


def test_filters(api, environment):
    now = timezone.now()
    old = TaskRunFactory(environment=environment, created_at=now - timedelta(days=3), task_identifier="a")
    tagged = TaskRunFactory(environment=environment, tags=["vip", "eu"], task_identifier="b", task_version="v2")
    failed = TaskRunFactory(environment=environment, status=RunStatus.SYSTEM_FAILURE, is_test=True, machine="micro")
    queued = TaskRunFactory(environment=environment, queue="task/b", region="eu-1")

    def listed(query):
        return set(ids_of(api.get(f"/api/v1/runs?{query}")))

    assert listed("filter%5Bstatus%5D=SYSTEM_FAILURE%2CCANCELED") == {failed.friendly_id}
    assert listed("filter%5BtaskIdentifier%5D=a%2Cb") == {old.friendly_id, tagged.friendly_id}
    assert listed("filter%5Btag%5D=vip") == {tagged.friendly_id}
    assert listed("filter%5Bversion%5D=v2") == {tagged.friendly_id}
    assert listed("filter%5BisTest%5D=true") == {failed.friendly_id}
    assert listed("filter%5Bmachine%5D=micro") == {failed.friendly_id}
    assert listed("filter%5Bqueue%5D=task%2Fb") == {queued.friendly_id}
    assert listed("filter%5Bregion%5D=eu-1") == {queued.friendly_id}
    assert listed("filter%5BcreatedAt%5D%5Bperiod%5D=1d") == {
        tagged.friendly_id,
        failed.friendly_id,
        queued.friendly_id,
    }
    to_ms = int((now - timedelta(days=2)).timestamp() * 1000)
    assert listed(f"filter%5BcreatedAt%5D%5Bto%5D={to_ms}") == {old.friendly_id}
    assert listed("filter%5Bschedule%5D=sched_1") == set()


def test_filter_by_batch(api):
    batch = api.post("/api/v3/batches", {"runCount": 2}, format="json").json()["id"]
    body = b'{"index":0,"task":"t","payload":"x"}\n{"index":1,"task":"t","payload":"y"}\n'
    api.generic("POST", f"/api/v3/batches/{batch}/items", body, content_type="application/x-ndjson")
    trigger(api, payload=1)

    listed = api.get(f"/api/v1/runs?filter%5Bbatch%5D={batch}").json()["data"]

    assert len(listed) == 2
    assert api.get("/api/v1/runs?filter%5Bbatch%5D=batch_nope").json()["data"] == []


def test_project_route_filters_by_environment(api, environment):
    run = TaskRunFactory(environment=environment)
    ref = environment.project.external_ref

    assert ids_of(api.get(f"/api/v1/projects/{ref}/runs?filter%5Benv%5D=dev")) == [run.friendly_id]
    assert ids_of(api.get(f"/api/v1/projects/{ref}/runs?filter%5Benv%5D=prod")) == []


def test_an_enrolled_environments_list_is_503_when_the_buffer_does_not_answer(api, enrolled, dead_redis):
    """Rows alone would leave its buffered runs out without a word: the SDK retries a 503."""
    make_runs(enrolled, 2)

    response = api.get("/api/v1/runs")

    assert response.status_code == 503 and "retry" in response.json()["error"]


def test_a_list_of_an_environment_not_enrolled_reads_its_rows_when_redis_is_down(api, environment, dead_redis):
    runs = make_runs(environment, 2)

    response = api.get("/api/v1/runs")

    assert response.status_code == 200 and ids_of(response) == [run.friendly_id for run in reversed(runs)]
