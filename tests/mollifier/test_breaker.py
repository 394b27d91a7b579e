"""The Redis time budget and circuit breaker (mollifier/breaker.py), against a redis-server of the
test's own that is paused (SIGSTOP: connections accepted, nothing answered) and resumed."""

import threading
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from django_redis import get_redis_connection

from mollifier import breaker, gate, keys, metrics, scripts
from mollifier import client as redis_client
from mollifier.breaker import BreakerOpen, State
from mollifier.drainer import Drainer
from mollifier.exceptions import BufferUnavailable
from runs import ids
from runs.models import TaskRun
from tests.conftest import client_for, enroll
from tests.factories import EnvironmentFactory
from tests.faults import RedisProcess
from tests.helpers import send_items, trigger
from tests.server import wait_until

pytestmark = pytest.mark.django_db


@pytest.fixture
def own_redis(settings):
    """A private Redis as the only Redis of the process (the cache and the buffer), with a short
    socket timeout."""
    store = RedisProcess()
    store.start()
    store.serve(settings, REDIS_BREAKER_FAILURES=3, REDIS_BREAKER_COOLDOWN_MS=60_000)
    yield store
    store.cleanup()


def opens() -> float:
    return metrics.REDIS_BREAKER_OPENS._value.get()


def rejected() -> float:
    return metrics.REDIS_BREAKER_REJECTED._value.get()


def answered() -> bool:
    """Redis answers through the breaker (a call once the cooldown has passed starts the probe
    that closes it); False while the breaker still refuses."""
    try:
        return redis_client.get().ping()
    except BreakerOpen:
        return False


def open_it(redis) -> None:
    """Three calls to the paused Redis, each paying the socket timeout: the breaker opens."""
    for _ in range(3):
        with pytest.raises(BufferUnavailable):
            redis.get("k")
    assert breaker.worst_state() == State.OPEN


def test_request_path_clients_never_retry_and_have_short_timeouts():
    kwargs = get_redis_connection("default").connection_pool.connection_kwargs
    assert kwargs["retry"].get_retries() == 0
    assert kwargs["socket_timeout"] == 0.5 and kwargs["socket_connect_timeout"] == 0.25


def test_a_hung_redis_opens_the_breaker_then_calls_fail_without_touching_it(own_redis):
    redis = redis_client.get()
    redis.set("k", "v")
    opened_before, rejected_before = opens(), rejected()
    with own_redis.paused():
        for _ in range(3):  # each pays the socket timeout
            with pytest.raises(BufferUnavailable) as caught:
                redis.get("k")
            assert not isinstance(caught.value, BreakerOpen)
        assert breaker.worst_state() == State.OPEN
        # Commands, scripts and pipelines are refused at once: no socket is touched.
        with pytest.raises(BreakerOpen):
            redis.get("k")
        with pytest.raises(BreakerOpen):
            scripts.READ(keys=["a", "b"], client=redis)
        with pytest.raises(BreakerOpen):
            redis.pipeline().get("k").execute()
    assert opens() == opened_before + 1
    assert rejected() == rejected_before + 3
    assert metrics.REDIS_BREAKER_STATE._value.get() == State.OPEN


def test_the_breaker_closes_once_redis_answers_again(own_redis, settings):
    settings.MOLLIFIER = {**settings.MOLLIFIER, "REDIS_BREAKER_COOLDOWN_MS": 100}
    redis = redis_client.get()
    with own_redis.paused():
        open_it(redis)

    wait_until(answered, timeout=10, interval=0.02)
    assert breaker.worst_state() == State.CLOSED
    assert metrics.REDIS_BREAKER_STATE._value.get() == State.CLOSED


def test_an_idle_process_closes_its_breaker_once_redis_answers(own_redis, settings):
    settings.MOLLIFIER = {**settings.MOLLIFIER, "REDIS_BREAKER_COOLDOWN_MS": 100}
    redis = redis_client.get()
    with own_redis.paused():
        open_it(redis)
        time.sleep(1)  # probes fail meanwhile (each PING pays the socket timeout), and reopen it
        assert breaker.worst_state() in (State.OPEN, State.HALF_OPEN)

    # No call at all from here: the breaker's own timer probes, and closes it.
    wait_until(lambda: breaker.worst_state() == State.CLOSED, timeout=10, interval=0.02)
    assert metrics.REDIS_BREAKER_STATE._value.get() == State.CLOSED


def test_a_failed_probe_opens_it_for_another_cooldown(own_redis, settings):
    settings.MOLLIFIER = {**settings.MOLLIFIER, "REDIS_BREAKER_COOLDOWN_MS": 100}
    redis = redis_client.get()
    with own_redis.paused():
        for _ in range(3):
            with pytest.raises(BufferUnavailable):
                redis.get("k")
        time.sleep(0.15)  # past the cooldown: the next call starts the probe, and is refused
        with pytest.raises(BreakerOpen):
            redis.get("k")
        gate = redis._breaker
        assert gate.state == State.HALF_OPEN
        wait_until(lambda: gate.probe_started_at is None, timeout=10, interval=0.02)  # the PING timed out
        assert gate.state == State.OPEN
        with pytest.raises(BreakerOpen):
            redis.get("k")


def test_half_open_lets_one_probe_through_at_a_time(settings):
    settings.MOLLIFIER = {**settings.MOLLIFIER, "REDIS_BREAKER_FAILURES": 2, "REDIS_BREAKER_COOLDOWN_MS": 1000}
    now = [100.0]
    gate_ = breaker.Breaker("test", clock=lambda: now[0])
    for _ in range(2):
        assert gate_.admit() is False
        gate_.failed(False, TimeoutError("no answer"))
    assert gate_.state == State.OPEN
    with pytest.raises(BreakerOpen):
        gate_.admit()
    now[0] += 1.0
    assert gate_.admit() is True  # the probe
    assert gate_.state == State.HALF_OPEN
    with pytest.raises(BreakerOpen):
        gate_.admit()  # everyone else still fails fast
    gate_.succeeded(True)
    assert gate_.state == State.CLOSED and gate_.admit() is False


def test_the_probe_runs_in_the_background_and_no_call_waits_for_it(settings):
    settings.MOLLIFIER = {**settings.MOLLIFIER, "REDIS_BREAKER_FAILURES": 1, "REDIS_BREAKER_COOLDOWN_MS": 1000}
    now = [0.0]
    answers = iter([TimeoutError("still hung"), None])
    probed = []

    def prober():
        probed.append(now[0])
        if (answer := next(answers)) is not None:
            raise answer

    gate_ = breaker.Breaker("test", clock=lambda: now[0], prober=prober)
    gate_.failed(False, TimeoutError("no answer"))
    for _ in range(2):  # a failed probe, then one that answers
        now[0] += 1.0
        with pytest.raises(BreakerOpen):
            gate_.admit()  # starts the probe; the caller does not wait for it
        wait_until(lambda: gate_.probe_started_at is None, timeout=5, interval=0.01)
    assert probed == [1.0, 2.0]
    assert gate_.state == State.CLOSED and gate_.admit() is False


def test_a_probe_that_never_reports_is_replaced_after_a_cooldown(settings):
    settings.MOLLIFIER = {**settings.MOLLIFIER, "REDIS_BREAKER_FAILURES": 1, "REDIS_BREAKER_COOLDOWN_MS": 1000}
    now = [0.0]
    gate_ = breaker.Breaker("test", clock=lambda: now[0])
    gate_.failed(False, TimeoutError("no answer"))
    now[0] += 1.0
    assert gate_.admit() is True
    now[0] += 1.0  # that probe's thread died without a word
    assert gate_.admit() is True


def test_a_probe_that_reports_after_it_was_replaced_changes_nothing(settings):
    """A probe slower than its budget is replaced; its late failure must not reopen a breaker that
    the newer probe closed (for Postgres a probe may take a connect and a statement's timeouts)."""
    settings.MOLLIFIER = {**settings.MOLLIFIER, "REDIS_BREAKER_FAILURES": 1, "REDIS_BREAKER_COOLDOWN_MS": 1000}
    now = [0.0]
    release_first = threading.Event()
    calls = []

    def prober():
        calls.append(now[0])
        if len(calls) == 1:
            release_first.wait(10)
            raise TimeoutError("the first probe, answered late")

    gate_ = breaker.Breaker("test", clock=lambda: now[0], prober=prober)
    gate_.failed(False, TimeoutError("no answer"))
    now[0] += 1.0
    with pytest.raises(BreakerOpen):
        gate_.admit()  # the first probe starts, and hangs
    now[0] += 1.0  # past its budget (a cooldown here): replaced by the next call's probe, which answers
    with pytest.raises(BreakerOpen):
        gate_.admit()
    wait_until(lambda: gate_.state == State.CLOSED, timeout=5, interval=0.01)
    release_first.set()
    wait_until(lambda: not [t for t in threading.enumerate() if t.name == "redis-probe test"], timeout=5)
    assert gate_.state == State.CLOSED and gate_.admit() is False
    assert calls == [1.0, 2.0]


def test_error_replies_are_answers_and_do_not_open_it():
    redis = redis_client.get()
    redis.set("a-string", "v")
    for _ in range(5):
        with pytest.raises(BufferUnavailable):
            redis.lpush("a-string", "x")  # WRONGTYPE: Redis answered
    assert breaker.worst_state() == State.CLOSED


def test_a_disabled_breaker_never_opens(own_redis):
    breaker.disable()
    redis = redis_client.get()
    with own_redis.paused():
        for _ in range(4):
            with pytest.raises(BufferUnavailable) as caught:
                redis.get("k")
            assert not isinstance(caught.value, BreakerOpen)
    assert breaker.worst_state() == State.CLOSED


def test_with_redis_hung_triggers_pass_through_and_reads_of_buffered_runs_answer_503(own_redis, mollifier_on, settings):
    settings.MOLLIFIER = {**settings.MOLLIFIER, "REDIS_BREAKER_COOLDOWN_MS": 1000}
    environment = enroll(EnvironmentFactory())
    api = client_for(environment)
    first = [trigger(api, payload=i) for i in range(7)] + [trigger(api, payload=7, idempotencyKey="buffered")]
    buffered = [r.json()["id"] for r in first if r.headers.get("x-mollifier") == "buffered"]
    direct = [r.json()["id"] for r in first if "x-mollifier" not in r.headers]
    assert len(buffered) == 3 and len(direct) == 5  # the keyed one among the buffered

    with own_redis.paused():
        during = [trigger(api, payload=i, headers={"x-trigger-request-idempotency-key": f"req-{i}"}) for i in range(12)]
        assert breaker.worst_state() in (State.OPEN, State.HALF_OPEN)  # half-open: a background probe runs
        assert {r.status_code for r in during} == {200}
        assert not [r for r in during if "x-mollifier" in r.headers]  # straight to Postgres
        assert len({r.json()["id"] for r in during}) == 12
        # Keyed runs wait in the buffer (the environment's keyed marker says so): a key no row holds
        # may be held by one of them, which cannot be asked now: 503, retried.
        keyed = trigger(api, payload="keyed", idempotencyKey="k")
        assert keyed.status_code == 503 and "idempotency key" in keyed.json()["error"]
        assert api.get(f"/api/v3/runs/{direct[0]}").status_code == 200
        unreadable = api.get(f"/api/v3/runs/{buffered[0]}")
        assert unreadable.status_code == 503  # retried by the SDK; never a false 404
        refused_before = rejected()
        admission = gate.admit_or_buffer(
            org_id=str(environment.organization_id),
            env_id=str(environment.pk),
            enrolled=True,
            bypass=None,
            entry=lambda: pytest.fail("no entry is built while the breaker is open"),
            now_ms=0,
        )
        assert admission.reason == "breaker_open"
        assert rejected() == refused_before + 1  # the gate's look before building counts as a refusal

    # Redis answers again: once the cooldown has passed, a call starts the probe that closes it.
    wait_until(answered, timeout=10, interval=0.02)
    again = trigger(api, payload="back")
    assert again.status_code == 200 and again.headers.get("x-mollifier") == "buffered"
    assert api.get(f"/api/v3/runs/{buffered[0]}").json()["status"] == "QUEUED"
    ids = set(TaskRun.objects.filter(environment=environment).values_list("id", flat=True))
    assert len(ids) == 5 + 12


def test_with_redis_hung_a_key_held_by_a_buffered_run_makes_no_second_run(own_redis, mollifier_on, settings):
    settings.MOLLIFIER = {**settings.MOLLIFIER, "REDIS_BREAKER_COOLDOWN_MS": 100}
    environment = enroll(EnvironmentFactory())
    api = client_for(environment)
    tripped = keys.tripped(str(environment.organization_id), str(environment.pk))
    redis_client.get().set(tripped, "1", px=60_000)
    held = trigger(api, payload="first", idempotencyKey="k")
    assert held.headers.get("x-mollifier") == "buffered"
    redis_client.get().delete(tripped)
    written = trigger(api, payload="written", idempotencyKey="w")
    assert "x-mollifier" not in written.headers

    with own_redis.paused():
        again = [trigger(api, payload="again", idempotencyKey="k") for _ in range(5)]
        assert {r.status_code for r in again} == {503}  # never a second run for the key
        # A key a row holds needs no Redis: answered from Postgres.
        assert trigger(api, payload="w again", idempotencyKey="w").json() == {
            "id": written.json()["id"],
            "isCached": True,
        }

    def cached() -> bool:
        response = trigger(api, payload="again", idempotencyKey="k")
        return response.status_code == 200 and response.json() == {"id": held.json()["id"], "isCached": True}

    wait_until(cached, timeout=10, interval=0.05)
    Drainer().run(once=True)
    rows = TaskRun.objects.filter(environment=environment)
    assert sorted(rows.values_list("idempotency_key", flat=True)) == ["k", "w"]


def test_with_redis_hung_changes_to_a_buffered_run_answer_503_and_are_not_lost(own_redis, mollifier_on, settings):
    """Cancel, tags, metadata, reschedule and the key reset of a run that only Redis holds cannot be
    applied while Redis hangs: each answers a retryable 503 (never a false 404, never a 200 that is
    then lost), and the same calls work once Redis answers. A run in Postgres needs no Redis."""
    settings.MOLLIFIER = {**settings.MOLLIFIER, "REDIS_BREAKER_COOLDOWN_MS": 100}
    environment = enroll(EnvironmentFactory())
    api = client_for(environment)
    tripped = keys.tripped(str(environment.organization_id), str(environment.pk))
    redis_client.get().set(tripped, "1", px=60_000)
    buffered = trigger(api, payload="held", idempotencyKey="k", delay="1h")  # reschedule needs a delay
    assert buffered.headers.get("x-mollifier") == "buffered"
    run_id = buffered.json()["id"]
    redis_client.get().delete(tripped)
    written = trigger(api, payload="written")
    assert "x-mollifier" not in written.headers  # a row: changing it needs no Redis
    later = (timezone.now() + timedelta(days=365)).replace(microsecond=0)  # a buffered run keeps milliseconds
    changes = [
        ("post", f"/api/v1/runs/{run_id}/tags", {"tags": ["t"]}),
        ("put", f"/api/v1/runs/{run_id}/metadata", {"metadata": {"k": 1}}),
        ("post", f"/api/v1/runs/{run_id}/reschedule", {"delay": later.isoformat()}),
        ("post", "/api/v1/idempotencyKeys/k/reset", {"taskIdentifier": "hello-world"}),
        ("post", f"/api/v2/runs/{run_id}/cancel", None),
    ]

    def as_read() -> dict:
        run = api.get(f"/api/v3/runs/{run_id}").json()
        metadata = api.get(f"/api/v1/runs/{run_id}/metadata").json()
        return {**{k: v for k, v in run.items() if k not in ("mollifier", "updatedAt")}, "read_metadata": metadata}

    before = as_read()
    with own_redis.paused():
        for method, path, body in changes:
            response = getattr(api, method)(path, body, format="json")
            assert response.status_code == 503, (path, response.status_code)
            assert "error" in response.json()
        assert (
            api.post(f"/api/v1/runs/{written.json()['id']}/tags", {"tags": ["row"]}, format="json").status_code == 200
        )

    wait_until(answered, timeout=10, interval=0.02)
    assert as_read() == before  # nothing half-applied meanwhile: tags, metadata, delay, status, key
    for method, path, body in changes:
        assert getattr(api, method)(path, body, format="json").status_code == 200, path
    Drainer().run(once=True)
    row = TaskRun.objects.get(id=ids.from_friendly(ids.RUN, run_id))
    assert (row.status, row.tags, row.delay_until, row.idempotency_key) == ("CANCELED", ["t"], later, None)
    assert api.get(f"/api/v1/runs/{run_id}/metadata").json() == {"metadata": {"k": 1}}


def test_with_redis_hung_a_batch_of_an_organisation_not_enrolled_is_written(own_redis, mollifier_on):
    """Only an enrolled organisation's batch can have members waiting in the buffer: the others'
    batches do not fail with Redis. An enrolled one answers a retryable 503 for its items (a resent
    stream could otherwise trigger a buffered member twice)."""
    plain, enrolled = EnvironmentFactory(), enroll(EnvironmentFactory())
    batches = {
        environment: client_for(environment).post("/api/v3/batches", {"runCount": 2}, format="json").json()["id"]
        for environment in (plain, enrolled)
    }
    items = [{"index": i, "task": "t", "payload": f"p{i}"} for i in range(2)]

    with own_redis.paused():
        written = send_items(client_for(plain), batches[plain], *items)
        refused = send_items(client_for(enrolled), batches[enrolled], *items)
        assert client_for(plain).get(f"/api/v2/batches/{batches[plain]}").status_code == 200

    assert written.status_code == 200 and written.json()["sealed"] is True
    assert TaskRun.objects.filter(environment=plain).count() == 2
    assert refused.status_code == 503 and TaskRun.objects.filter(environment=enrolled).count() == 0
