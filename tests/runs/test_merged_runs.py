"""``TaskRun.objects.…with_buffered()``: the manager's merged read of both stores (runs/read_fallback.py),
used directly as the API listing and the admin use it."""

import pytest

from runs.models import TaskRun
from tests.buffering import fill_buffer
from tests.conftest import client_for
from tests.factories import EnvironmentFactory
from tests.helpers import trigger

pytestmark = pytest.mark.django_db


@pytest.fixture
def stores():
    """Three runs written directly, then four buffered, then two more written directly, in one
    environment; one buffered run of another environment of the same project (the same
    organisation's buffer: only the environment tells them apart)."""
    environment = EnvironmentFactory()
    api = client_for(environment)
    written = [trigger(api, payload=i).json()["id"] for i in range(3)]
    buffered = fill_buffer(environment, 4, task="merged")
    written += [trigger(api, payload=i).json()["id"] for i in range(2)]
    sibling = EnvironmentFactory(project=environment.project, slug="prod", type="PRODUCTION")
    (elsewhere,) = fill_buffer(sibling, 1, task="merged")
    return environment, written, buffered, sibling, elsewhere


def merged(environment):
    return TaskRun.objects.filter(environment=environment).with_buffered(environments=[environment])


def test_iteration_count_and_slices_cover_both_stores_newest_first(stores):
    environment, written, buffered, _, _ = stores
    runs = list(merged(environment))

    assert sorted(run.friendly_id for run in runs) == sorted(written + buffered)  # the sibling's: not here
    assert [(run.created_at, run.id) for run in runs] == sorted(((r.created_at, r.id) for r in runs), reverse=True)
    assert {run.friendly_id for run in runs if run.is_buffered} == set(buffered)
    assert len(merged(environment)) == merged(environment).count() == 9
    assert [run.id for run in merged(environment)[2:6]] == [run.id for run in runs[2:6]]
    counts = merged(environment).counts()
    assert (counts.buffered, counts.postgres) == (4, 5)


def test_keyset_pages_walk_both_stores_once(stores):
    environment, written, buffered, _, _ = stores
    seen, after = [], None
    while True:
        page = merged(environment).page(size=2, after=after)
        seen += [run.friendly_id for run in page.runs]
        if page.next is None:
            break
        after = page.next
    assert sorted(seen) == sorted(written + buffered) and len(seen) == len(set(seen))


def test_filters_apply_to_both_stores(stores):
    environment, written, buffered, _, _ = stores
    tasks = {run.task_identifier for run in merged(environment).filter(task_identifier=["merged"])}
    assert tasks == {"merged"}
    assert {run.friendly_id for run in merged(environment).filter(task_identifier=["merged"])} == set(buffered)
    assert {run.friendly_id for run in merged(environment).filter(status=["QUEUED"])} == set(written + buffered)
    assert list(merged(environment).filter(status=["COMPLETED"])) == []


def test_get_finds_a_run_in_either_store_of_its_environment_only(stores):
    environment, written, buffered, sibling, elsewhere = stores
    assert merged(environment).get(run_id=buffered[0]).is_buffered
    assert not merged(environment).get(run_id=written[0]).is_buffered
    assert merged(sibling).get(run_id=elsewhere).is_buffered
    with pytest.raises(TaskRun.DoesNotExist):
        merged(sibling).get(run_id=buffered[0])  # the same organisation's buffer, another environment
    with pytest.raises(TaskRun.DoesNotExist):
        merged(environment).get(run_id=elsewhere)
