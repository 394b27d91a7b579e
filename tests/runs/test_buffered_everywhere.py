"""One run, three places — buffered, leased mid-drain, materialised — and every read and change
answers the same wherever it is."""

import threading
import time

import pytest

from mollifier import buffer
from mollifier.clock import now_ms
from mollifier.drainer import Drainer
from runs.models import RunStatus, TaskRun
from tests.buffering import pin_in_open_transaction, write_round
from tests.conftest import client_for
from tests.helpers import trigger

pytestmark = pytest.mark.django_db


def buffered_run(api, **options) -> str:
    for i in range(5):
        trigger(api, payload={"warm": i})
    response = trigger(api, payload={"the": "run"}, **options)
    assert response.headers["x-mollifier"] == "buffered"
    return response.json()["id"]


def lease(environment, run_id):
    popped = buffer.pop(
        org_id=str(environment.organization_id),
        env_id=str(environment.pk),
        limit=1000,
        lease_ms=60_000,
        now_ms=now_ms(),
    )
    return [entry for entry in popped.entries if entry.run_id == run_id]


def drain():
    Drainer().run(once=True)


def comparable(body: dict) -> dict:
    # ``mollifier`` (the write estimate) is only on a run still in the buffer; the SDK drops it.
    return {k: v for k, v in body.items() if k not in ("updatedAt", "mollifier")}


def test_reads_answer_the_same_in_all_three_places(api, enrolled):
    run_id = buffered_run(api, tags=["x"], metadata={"m": 1}, delay="1h")
    buffered = api.get(f"/api/v3/runs/{run_id}").json()
    listed = api.get("/api/v1/runs").json()["data"]

    entries = lease(enrolled, run_id)
    leased = api.get(f"/api/v3/runs/{run_id}").json()
    write_round(entries)  # the drainer's round, finished by hand
    buffer.ack(entries, now_ms=now_ms())
    materialised = api.get(f"/api/v3/runs/{run_id}").json()

    assert buffered["status"] == "DELAYED" and buffered["tags"] == ["x"] and buffered["metadata"] == {"m": 1}
    assert comparable(buffered) == comparable(leased) == comparable(materialised)
    assert "mollifier" in buffered and "mollifier" in leased and "mollifier" not in materialised
    assert [r["id"] for r in listed].count(run_id) == 1


def test_changes_to_a_buffered_run_survive_materialisation(api, enrolled):
    run_id = buffered_run(api, delay="1h", tags=["a"])
    later = "2030-01-01T00:00:00.000Z"

    assert api.post(f"/api/v1/runs/{run_id}/tags", {"tags": ["b", "a"]}, format="json").json() == {
        "message": "Successfully set 1 new tags."
    }
    assert api.put(
        f"/api/v1/runs/{run_id}/metadata",
        {"metadata": {"k": 1}, "operations": [{"type": "increment", "key": "k", "value": 2}]},
        format="json",
    ).json() == {"metadata": {"k": 3}}
    rescheduled = api.post(f"/api/v1/runs/{run_id}/reschedule", {"delay": later}, format="json").json()
    assert rescheduled["delayedUntil"] == later and rescheduled["status"] == "DELAYED"
    assert TaskRun.objects.filter(id=run_id.removeprefix("run_")).count() == 0  # still buffered

    drain()

    row = TaskRun.objects.get(id=run_id.removeprefix("run_"))
    assert row.tags == ["a", "b"] and row.metadata == '{"k":3}' and row.delay_until.isoformat().startswith("2030-01-01")
    assert api.get(f"/api/v1/runs/{run_id}/metadata").json() == {"metadata": {"k": 3}}
    # The same changes on the row answer the same way.
    assert api.post(f"/api/v1/runs/{run_id}/tags", {"tags": ["c"]}, format="json").json() == {
        "message": "Successfully set 1 new tags."
    }
    assert api.put(
        f"/api/v1/runs/{run_id}/metadata",
        {"operations": [{"type": "increment", "key": "k", "value": 1}]},
        format="json",
    ).json() == {"metadata": {"k": 4}}


def test_cancel_acknowledged_while_buffered_ends_as_a_canceled_row(api, enrolled):
    run_id = buffered_run(api)

    assert api.post(f"/api/v2/runs/{run_id}/cancel").json() == {"id": run_id}
    drain()

    assert TaskRun.objects.get(id=run_id.removeprefix("run_")).status == RunStatus.CANCELED


@pytest.mark.django_db(transaction=True)  # the drain finishes on another thread's connection
def test_a_change_mid_drain_waits_for_the_row(api, enrolled):
    run_id = buffered_run(api)
    entries = lease(enrolled, run_id)

    def finish_the_drain():
        time.sleep(0.3)
        write_round(entries)
        buffer.ack(entries, now_ms=now_ms())
        from django.db import connection

        connection.close()

    threading.Thread(target=finish_the_drain).start()
    response = api.post(f"/api/v2/runs/{run_id}/cancel")

    assert response.status_code == 200
    assert TaskRun.objects.get(id=run_id.removeprefix("run_")).status == RunStatus.CANCELED


def test_a_change_that_stays_mid_drain_answers_503_and_changes_nothing(api, enrolled, settings):
    settings.TRIGGER = {**settings.TRIGGER, "MID_DRAIN_WAIT_SECONDS": 0.2}
    run_id = buffered_run(api)
    lease(enrolled, run_id)

    response = api.post(f"/api/v1/runs/{run_id}/tags", {"tags": ["late"]}, format="json")

    assert response.status_code == 503 and response.json()["error"] == "Run materialisation timed out"
    assert buffer.get(org_id=str(enrolled.organization_id), run_id=run_id).tags == []


def test_tags_cap_holds_in_the_buffer(api, enrolled):
    run_id = buffered_run(api, tags=[f"t{i}" for i in range(9)])

    response = api.post(f"/api/v1/runs/{run_id}/tags", {"tags": ["x", "y"]}, format="json")

    assert response.status_code == 422 and "10 tags" in response.json()["error"]


def test_adding_tags_counts_the_runs_tags_after_not_the_list_as_sent(api, enrolled):
    """As upstream: eleven copies of tags the run has, or of one new tag, make a run of at most ten."""
    run_id = buffered_run(api, tags=[f"t{i}" for i in range(9)])

    response = api.post(f"/api/v1/runs/{run_id}/tags", {"tags": ["t0"] * 6 + ["new"] * 5}, format="json")

    assert response.status_code == 200, response.content
    assert sorted(api.get(f"/api/v3/runs/{run_id}").json()["tags"]) == sorted([f"t{i}" for i in range(9)] + ["new"])


def test_reschedule_refuses_a_run_that_is_not_delayed(api, enrolled):
    run_id = buffered_run(api)
    response = api.post(f"/api/v1/runs/{run_id}/reschedule", {"delay": "1h"}, format="json")
    assert response.status_code == 400 and "not delayed" in response.json()["error"]


@pytest.mark.django_db(transaction=True)
def test_concurrent_metadata_increments_on_a_buffered_run_all_count(mollifier_on):
    from tests.conftest import enroll
    from tests.factories import EnvironmentFactory

    environment = enroll(EnvironmentFactory())
    api = client_for(environment)
    run_id = buffered_run(api)
    errors = []

    def bump():
        try:
            client = client_for(environment)
            for _ in range(5):
                for _attempt in range(5):  # a 503 under contention is retried, as the SDK does
                    response = client.put(
                        f"/api/v1/runs/{run_id}/metadata",
                        {"operations": [{"type": "increment", "key": "n", "value": 1}]},
                        format="json",
                    )
                    if response.status_code != 503:
                        break
                assert response.status_code == 200, response.content
        except Exception as error:  # collected below
            errors.append(error)
        finally:
            from django.db import connection

            connection.close()

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert api.get(f"/api/v1/runs/{run_id}/metadata").json() == {"metadata": {"n": 40}}


def test_replay_makes_a_new_run_with_the_same_payload_through_the_gate(api, enrolled):
    run_id = buffered_run(api, tags=["orig"])

    replayed = api.post(f"/api/v1/runs/{run_id}/replay").json()["id"]
    overridden = api.post(f"/api/v1/runs/{run_id}/replay", {"tags": ["new"]}, format="json").json()["id"]

    assert replayed != run_id
    body = api.get(f"/api/v3/runs/{replayed}").json()
    assert body["payload"] == {"the": "run"} and body["tags"] == ["orig"]
    assert api.get(f"/api/v3/runs/{overridden}").json()["tags"] == ["new"]
    assert buffer.get(org_id=str(enrolled.organization_id), run_id=replayed) is not None  # the gate still holds


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("get", "/api/v3/runs/{id}", None),
        ("post", "/api/v2/runs/{id}/cancel", None),
        ("post", "/api/v1/runs/{id}/tags", {"tags": ["x"]}),
        ("get", "/api/v1/runs/{id}/metadata", None),
        ("put", "/api/v1/runs/{id}/metadata", {"metadata": {"a": 1}}),
        ("post", "/api/v1/runs/{id}/reschedule", {"delay": "1h"}),
        ("post", "/api/v1/runs/{id}/replay", None),
    ],
)
@pytest.mark.parametrize("where", ["buffer", "postgres"])
def test_another_environments_run_is_404_everywhere(api, enrolled, other_api, method, path, body, where):
    run_id = buffered_run(api, delay="1h")
    if where == "postgres":
        drain()

    response = getattr(other_api, method)(path.format(id=run_id), body, format="json")

    assert response.status_code == 404, response.content
    assert api.get(f"/api/v3/runs/{run_id}").json()["tags"] == []


def test_listing_merges_both_stores_newest_first_once_across_pages(api, enrolled, settings):
    settings.TRIGGER = {**settings.TRIGGER, "LIST_BUFFER_SCAN": 7}  # a backlog far larger than the scan
    answered = [trigger(api, payload={"i": i}).json()["id"] for i in range(60)]
    org, env = str(enrolled.organization_id), str(enrolled.pk)
    half = buffer.pop(org_id=org, env_id=env, limit=20, lease_ms=60_000, now_ms=now_ms())
    write_round(half.entries[:10])  # in both stores for now: Postgres must win
    buffer.ack(half.entries[10:], now_ms=now_ms())  # acked without rows: those vanish (not real life)
    expected = [run_id for run_id in reversed(answered) if run_id not in {e.run_id for e in half.entries[10:]}]

    seen, url = [], "/api/v1/runs?page%5Bsize%5D=6"
    while url:
        page = api.get(url).json()
        seen += [run["id"] for run in page["data"]]
        url = (
            f"/api/v1/runs?page%5Bsize%5D=6&page%5Bafter%5D={page['pagination']['next']}"
            if page["pagination"].get("next")
            else None
        )

    assert seen == expected


def test_buffered_runs_are_filtered_like_rows(api, enrolled):
    for i in range(5):
        trigger(api, payload=i)
    tagged = trigger(api, payload=1, tags=["vip"]).json()["id"]
    delayed = trigger(api, payload=1, delay="1h").json()["id"]

    assert [r["id"] for r in api.get("/api/v1/runs?filter%5Btag%5D=vip").json()["data"]] == [tagged]
    assert [r["id"] for r in api.get("/api/v1/runs?filter%5Bstatus%5D=DELAYED").json()["data"]] == [delayed]
    assert len(api.get("/api/v1/runs?filter%5Bstatus%5D=QUEUED").json()["data"]) == 6


def test_metadata_operations_reach_the_parent_and_the_root_wherever_they_live(api, enrolled):
    """The SDK's ``metadata.parent`` and ``metadata.root``: a child's update carries operations for
    its parent and its root run, applied to each in whichever store it is."""
    root = trigger(api, payload="root").json()["id"]  # written directly (the gate is not tripped yet)
    parent = buffered_run(api, parentRunId=root)
    child = trigger(api, payload="child", parentRunId=parent)
    assert child.headers["x-mollifier"] == "buffered"

    answer = api.put(
        f"/api/v1/runs/{child.json()['id']}/metadata",
        {
            "metadata": {"own": 1},
            "parentOperations": [{"type": "increment", "key": "children", "value": 1}],
            "rootOperations": [{"type": "set", "key": "seen", "value": "child"}],
        },
        format="json",
    )

    assert answer.status_code == 200 and answer.json() == {"metadata": {"own": 1}}
    assert api.get(f"/api/v1/runs/{parent}/metadata").json() == {"metadata": {"children": 1}}
    assert api.get(f"/api/v1/runs/{root}/metadata").json() == {"metadata": {"seen": "child"}}
    drain()
    assert TaskRun.objects.get(id=parent.removeprefix("run_")).metadata == '{"children":1}'


def test_a_parent_held_mid_drain_does_not_fail_the_childs_own_change(api, enrolled, settings):
    """The parent is pinned to a drainer's transaction that stays open past the wait. The child's own
    change has landed, so the update answers 200 with it: a 503 would have the SDK retry it and
    apply the child's increment twice. The parent's operations are skipped (and logged)."""
    settings.TRIGGER = {**settings.TRIGGER, "MID_DRAIN_WAIT_SECONDS": 0.2}
    parent = buffered_run(api)
    child = trigger(api, payload="child", parentRunId=parent).json()["id"]
    org, env = str(enrolled.organization_id), str(enrolled.pk)
    entries = buffer.pop(org_id=org, env_id=env, limit=1, lease_ms=60_000, now_ms=now_ms()).entries
    assert [entry.run_id for entry in entries] == [parent]
    running = pin_in_open_transaction(entries)

    answer = api.put(
        f"/api/v1/runs/{child}/metadata",
        {
            "operations": [{"type": "increment", "key": "n", "value": 1}],
            "parentOperations": [{"type": "increment", "key": "children", "value": 1}],
        },
        format="json",
    )
    running.close()

    assert answer.status_code == 200 and answer.json() == {"metadata": {"n": 1}}
    assert api.get(f"/api/v1/runs/{child}/metadata").json() == {"metadata": {"n": 1}}


def test_changes_to_runs_of_a_stalled_drain_transaction_are_answered_at_once_after_one_wait(
    api, enrolled, settings, caplog
):
    """A change that waited the whole mid-drain wait on a running drain transaction marks it stalled
    in this worker: changes to its other runs answer 503 at once (logged), holding no worker."""
    settings.TRIGGER = {**settings.TRIGGER, "MID_DRAIN_WAIT_SECONDS": 0.2}
    first, second = buffered_run(api), buffered_run(api)
    org, env = str(enrolled.organization_id), str(enrolled.pk)
    entries = buffer.pop(org_id=org, env_id=env, limit=100, lease_ms=60_000, now_ms=now_ms()).entries
    assert {first, second} <= {entry.run_id for entry in entries}
    running = pin_in_open_transaction(entries)
    caplog.set_level("INFO", logger="runs.services.mid_drain")

    waited = api.post(f"/api/v2/runs/{first}/cancel")
    answered = api.post(f"/api/v2/runs/{second}/cancel")
    running.close()  # rolled back: the runs go back to the buffer, uncancelled

    assert (waited.status_code, answered.status_code) == (503, 503)
    stalled = [r.getMessage() for r in caplog.records if "runs.mid_drain.stalled_pin" in r.getMessage()]
    assert len(stalled) == 1 and f"run={second}" in stalled[0]


@pytest.mark.parametrize("parent_in", ["buffer", "postgres"])
def test_a_parent_that_cannot_hold_its_operations_does_not_fail_the_childs_own_change(
    api, enrolled, settings, parent_in
):
    """The parent's operations would take its metadata past the size limit (a 413 of its own):
    the child's change has landed, so the update answers 200 with it and the parent is left as it
    was (the skip is logged)."""
    settings.TRIGGER = {**settings.TRIGGER, "MAX_METADATA_BYTES": 200}
    parent = buffered_run(api, metadata={"log": "x" * 150})
    if parent_in == "postgres":
        drain()
    child = trigger(api, payload="child", parentRunId=parent).json()["id"]

    answer = api.put(
        f"/api/v1/runs/{child}/metadata",
        {
            "operations": [{"type": "increment", "key": "n", "value": 1}],
            "parentOperations": [{"type": "append", "key": "lines", "value": "y" * 100}],
        },
        format="json",
    )

    assert answer.status_code == 200 and answer.json() == {"metadata": {"n": 1}}
    assert api.get(f"/api/v1/runs/{child}/metadata").json() == {"metadata": {"n": 1}}
    assert api.get(f"/api/v1/runs/{parent}/metadata").json() == {"metadata": {"log": "x" * 150}}


def test_in_its_grace_period_a_written_run_reads_as_its_row_without_its_snapshot(api, enrolled):
    run_id = buffered_run(api, tags=["x"])
    buffered = api.get(f"/api/v3/runs/{run_id}").json()

    drain()

    entry = buffer.get(org_id=str(enrolled.organization_id), run_id=run_id)
    assert entry is not None and entry.materialised  # still found by reads racing the drain
    assert entry.snapshot is None and entry.raw_snapshot == ""  # its bytes freed at the ack
    assert comparable(api.get(f"/api/v3/runs/{run_id}").json()) == comparable(buffered)
    listed = [run for run in api.get("/api/v1/runs").json()["data"] if run["id"] == run_id]
    assert len(listed) == 1 and listed[0]["tags"] == ["x"]
