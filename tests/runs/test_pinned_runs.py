"""Changing a run a drainer has pinned to its Postgres transaction: that transaction decides.

Committed: the run is its row now and the change goes there. Rolled back: the run is given back to
the buffer unchanged and the change applies there. Still running: the change waits, then 503.
"""

import psycopg
import pytest
from django.db import connection, transaction

from mollifier import buffer, keys
from mollifier.buffer import Pin
from mollifier.client import get as redis_client
from mollifier.clock import now_ms
from mollifier.drainer import Drainer
from mollifier.exceptions import SinkUnavailable
from mollifier.sink import Settled
from runs.models import RunStatus, TaskRun
from runs.services.materialise import TaskRunSink
from runs.services.mid_drain import settle_pin
from runs.services.pins import settle_pins
from tests.buffering import fill_buffer, pin_in_open_transaction, write_round
from tests.conftest import client_for, enroll
from tests.factories import EnvironmentFactory
from tests.server import database_url

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def leased(mollifier_on):
    """A buffered run of an enrolled environment, leased by a drainer; (environment, api, entries)."""
    environment = enroll(EnvironmentFactory())
    fill_buffer(environment, 1, idempotencyKey="k")
    entries = buffer.pop(
        org_id=str(environment.organization_id), env_id=str(environment.pk), limit=1, lease_ms=60_000, now_ms=now_ms()
    ).entries
    return environment, client_for(environment), entries


def test_a_change_to_a_run_whose_round_committed_goes_to_the_row(leased):
    environment, api, entries = leased
    run_id = entries[0].run_id
    write_round(entries)  # committed, not yet acked: the entry is still pinned

    cancel = api.post(f"/api/v2/runs/{run_id}/cancel")
    tags = api.post(f"/api/v1/runs/{run_id}/tags", {"tags": ["late"]}, format="json")
    metadata = api.put(f"/api/v1/runs/{run_id}/metadata", {"metadata": {"m": 2}}, format="json")

    assert (cancel.status_code, tags.status_code, metadata.status_code) == (200, 200, 200)
    row = TaskRun.objects.get(id=run_id.removeprefix("run_"))
    assert row.status == RunStatus.CANCELED and row.tags == ["late"] and row.metadata == '{"m":2}'
    Drainer(clock=lambda: now_ms() + 120_000).run(once=True)  # the pin is settled: acked
    assert buffer.buffered_count(str(environment.organization_id)) == 0
    assert TaskRun.objects.get(id=row.id).status == RunStatus.CANCELED


def test_a_change_to_a_run_whose_round_rolled_back_goes_to_the_buffer(leased):
    environment, api, entries = leased
    run_id = entries[0].run_id
    pin_in_open_transaction(entries).close()  # the drainer's transaction ends without a commit

    assert api.post(f"/api/v2/runs/{run_id}/cancel").status_code == 200

    entry = buffer.get(org_id=str(environment.organization_id), run_id=run_id)
    assert entry.cancelled_at_ms is not None and not TaskRun.objects.exists()
    Drainer().run(once=True)
    assert TaskRun.objects.get(id=run_id.removeprefix("run_")).status == RunStatus.CANCELED


def test_a_change_waits_while_the_round_is_being_written_then_answers_503(leased, settings):
    settings.TRIGGER = {**settings.TRIGGER, "MID_DRAIN_WAIT_SECONDS": 0.2}
    environment, api, entries = leased
    run_id = entries[0].run_id
    connection = pin_in_open_transaction(entries)
    try:
        response = api.post(f"/api/v2/runs/{run_id}/cancel")
        reset = api.post("/api/v1/idempotencyKeys/k/reset", {"taskIdentifier": "hello-world"}, format="json")
    finally:
        connection.close()

    assert response.status_code == 503 and response.json() == {"error": "Run materialisation timed out"}
    assert reset.status_code == 503
    assert buffer.get(org_id=str(environment.organization_id), run_id=run_id).cancelled_at_ms is None
    assert api.post(f"/api/v2/runs/{run_id}/cancel").status_code == 200  # the SDK's retry, once it ended


def test_reset_of_a_key_whose_holder_committed_clears_the_row(leased):
    environment, api, entries = leased
    write_round(entries)

    response = api.post("/api/v1/idempotencyKeys/k/reset", {"taskIdentifier": "hello-world"}, format="json")

    assert response.status_code == 200
    assert TaskRun.objects.get(id=entries[0].run_id.removeprefix("run_")).idempotency_key is None


def test_whoever_settles_a_committed_pin_acks_the_entry(leased):
    """Found by the model test: a change or a key reset that settled a committed pin answered from
    the row but left the entry pinned, counted as waiting until a drainer's lease expired."""
    environment, _, entries = leased
    org, env, run_id = str(environment.organization_id), str(environment.pk), entries[0].run_id
    write_round(entries)  # committed, not yet acked: the entry is still pinned
    holder = redis_client().hget(keys.holders(org, env), run_id).decode()

    assert settle_pin(Pin(org, env, run_id, holder)) == Settled.COMMITTED

    assert buffer.buffered_count(org) == 0
    assert buffer.get(org_id=org, run_id=run_id).materialised


def an_id_postgres_has_not_reached() -> str:
    """Postgres restored from a backup, or failed over before the drainer's transaction reached the
    standby: the pin names a transaction id Postgres has not reached."""
    with psycopg.connect(database_url(), autocommit=True) as other:
        return other.execute("SELECT (pg_current_xact_id()::text::bigint + 1000000)::text").fetchone()[0]


def an_id_given_again_to_a_transaction_that_committed() -> str:
    """After such a loss, Postgres gives the same id again, and that transaction, not the drainer's,
    commits (having written nothing for the run)."""
    with psycopg.connect(database_url()) as other:
        return other.execute("SELECT pg_current_xact_id()::text").fetchone()[0]  # committed on leaving


@pytest.mark.parametrize("lost_id", [an_id_postgres_has_not_reached, an_id_given_again_to_a_transaction_that_committed])
def test_a_pin_to_a_transaction_postgres_lost_is_settled_by_the_rows(leased, lost_id):
    """The run has no row: it is given back and drained. Before, the first failed every settle (the
    drainer stopped) and the second was taken for the drainer's commit (the run acked with no row)."""
    environment, _, entries = leased
    org, env, run_id = str(environment.organization_id), str(environment.pk), entries[0].run_id
    assert buffer.pin(entries, txid=lost_id(), now_ms=now_ms(), lease_ms=60_000) == {run_id}
    holder = redis_client().hget(keys.holders(org, env), run_id).decode()

    assert settle_pin(Pin(org, env, run_id, holder)) == Settled.NOT_COMMITTED

    Drainer().run(once=True)
    assert TaskRun.objects.filter(id=run_id.removeprefix("run_")).exists()
    assert buffer.buffered_count(org) == 0


class SettleUnreachable(TaskRunSink):
    """Postgres refuses the settle's connection (the API's own requests still reach it)."""

    def settle(self, pins, *, lapsed=False):
        raise SinkUnavailable("connection refused")


def test_a_change_that_meets_a_pin_while_postgres_cannot_be_reached_answers_503(leased, settings):
    """Settling the pin needs Postgres; when it cannot be reached the change answers 503, which the
    SDK retries (it answered 500, logged as an unhandled error)."""
    _, api, entries = leased
    running = pin_in_open_transaction(entries)  # pinned to a transaction still running
    settings.MOLLIFIER = {**settings.MOLLIFIER, "SINK": f"{__name__}.SettleUnreachable"}

    answer = api.post(f"/api/v2/runs/{entries[0].run_id}/cancel")

    running.close()
    assert answer.status_code == 503 and answer.json() == {"error": "Database unavailable, retry later"}


def test_a_pin_to_a_running_transaction_reads_as_running_from_an_older_transaction(leased):
    """Settled from inside a transaction that took its id before the drainer's did (a change made
    inside a transaction of its own): the drainer's transaction is still running, not unknown."""
    environment, _, entries = leased
    org, env, run_id = str(environment.organization_id), str(environment.pk), entries[0].run_id
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_current_xact_id()")  # this transaction's id, taken first
        running = pin_in_open_transaction(entries)
        holder = redis_client().hget(keys.holders(org, env), run_id).decode()

        outcome = settle_pin(Pin(org, env, run_id, holder))

        running.close()
    assert outcome == Settled.RUNNING


def test_pins_are_settled_each_by_its_own_transaction_when_one_is_unknown_to_postgres(leased):
    """Settled together, a pin Postgres does not know of does not hide another one's outcome."""
    environment, _, entries = leased
    org, env = str(environment.organization_id), str(environment.pk)
    (lost,) = fill_buffer(environment, 1)
    [lost_entry] = buffer.pop(org_id=org, env_id=env, limit=1, lease_ms=60_000, now_ms=now_ms()).entries
    assert buffer.pin([lost_entry], txid=an_id_postgres_has_not_reached(), now_ms=now_ms(), lease_ms=60_000) == {lost}
    running = pin_in_open_transaction(entries)
    holders = redis_client().hmget(keys.holders(org, env), [entries[0].run_id, lost])

    outcome = settle_pins(
        [Pin(org, env, entries[0].run_id, holders[0].decode()), Pin(org, env, lost, holders[1].decode())]
    )

    running.close()
    assert outcome == {entries[0].run_id: Settled.RUNNING, lost: Settled.NOT_COMMITTED}
