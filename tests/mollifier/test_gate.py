"""The gate's cascade, through the real trigger path."""

import pytest

from mollifier import breaker, buffer, gate, keys
from mollifier.codec import Entry
from runs.models import TaskRun
from runs.services.keyed_markers import keyed_marker_make_sure
from tests.conftest import enroll
from tests.helpers import trigger
from tests.redis_watch import watch_redis

pytestmark = pytest.mark.django_db


def test_switch_off_touches_no_mollifier_key(api, environment, settings):
    enroll(environment)
    settings.MOLLIFIER = {**settings.MOLLIFIER, "ENABLED": False, "SHADOW_MODE": True, "TRIP_THRESHOLD": 1}
    stop = watch_redis()

    responses = [trigger(api, payload=i, idempotencyKey=f"k{i}") for i in range(5)]
    commands = [event["command"] for event in stop()]

    assert {r.status_code for r in responses} == {200}
    assert TaskRun.objects.count() == 5
    assert not [c for c in commands if "mollifier" in c or "EVALSHA" in c.upper()], commands


def test_an_organisation_that_is_not_enrolled_is_not_gated(api, environment, mollifier_on, redis_client):
    responses = [trigger(api, payload=i) for i in range(10)]

    assert not [r for r in responses if "x-mollifier" in r.headers]
    assert not list(redis_client.scan_iter("mollifier:*"))


@pytest.mark.parametrize("flag", ["true", 1, "false", None, {"on": True}])
def test_only_json_true_enrols(api, environment, mollifier_on, flag):
    enroll(environment, flag)

    responses = [trigger(api, payload=i) for i in range(8)]

    assert not [r for r in responses if "x-mollifier" in r.headers]


def test_enrolment_takes_effect_on_the_next_trigger(api, environment, mollifier_on):
    before = [trigger(api, payload=i) for i in range(6)]
    enroll(environment)  # in the admin, say: no restart, the next trigger reads the flag
    after = [trigger(api, payload=i) for i in range(6)]

    assert [r.headers.get("x-mollifier") for r in before] == [None] * 6
    assert [r.headers.get("x-mollifier") for r in after] == [None] * 5 + ["buffered"]


def test_shadow_mode_counts_but_never_diverts(api, environment, mollifier_on, settings, redis_client):
    settings.MOLLIFIER = {**settings.MOLLIFIER, "SHADOW_MODE": True}
    org, env = str(environment.organization_id), str(environment.pk)

    responses = [trigger(api, payload=i) for i in range(8)]

    assert not [r for r in responses if "x-mollifier" in r.headers]
    assert TaskRun.objects.count() == 8
    assert redis_client.exists(keys.tripped(org, env))  # it would have mollified
    assert buffer.buffered_count(org) == 0


def entry_factory(env_id: str):
    return lambda: Entry(run_id=f"run_{env_id}", org_id="1", env_id=env_id, task="t", accepted_at_ms=0, snapshot={})


def test_the_global_gate_trips_across_environments(mollifier_on, settings):
    settings.MOLLIFIER = {**settings.MOLLIFIER, "TRIP_THRESHOLD": 1000, "GLOBAL_TRIP_THRESHOLD": 3}
    now = 1_800_000_000_000
    decisions = [
        gate.admit_or_buffer(
            org_id="1", env_id=str(env), enrolled=True, bypass=None, entry=entry_factory(str(env)), now_ms=now + env
        )
        for env in range(6)
    ]

    assert [d.decision for d in decisions] == ["pass_through"] * 3 + ["mollify"] * 3
    assert {d.reason for d in decisions[3:]} == {"global_rate"}


def test_the_gate_fails_open_when_redis_is_down(api, environment, mollifier_on, dead_redis):
    enroll(environment)

    responses = [trigger(api, payload=i) for i in range(8)]

    assert {r.status_code for r in responses} == {200}
    assert not [r for r in responses if "x-mollifier" in r.headers]
    assert TaskRun.objects.count() == 8
    # With keyed runs known to wait in the buffer (the environment's keyed marker), a keyed trigger
    # would risk a second run beside a buffered holder it cannot see: 503 (test_keyed_markers.py).
    keyed_marker_make_sure(environment)
    assert trigger(api, payload="keyed", idempotencyKey="k").status_code == 503
    assert TaskRun.objects.count() == 8
    # Refused connections opened the circuit breaker meanwhile: Redis is not even tried now.
    assert gate.admit_or_buffer(
        org_id="1", env_id="1", enrolled=True, bypass=None, entry=entry_factory("1"), now_ms=0
    ) == gate.Admission(gate.Decision.PASS_THROUGH, "breaker_open")
    breaker.reset()
    assert gate.admit_or_buffer(
        org_id="1", env_id="1", enrolled=True, bypass=None, entry=entry_factory("1"), now_ms=0
    ) == gate.Admission(gate.Decision.PASS_THROUGH, "redis_error")


def test_bypass_and_switch_reasons(mollifier_on, settings):
    assert (
        gate.admit_or_buffer(
            org_id="1", env_id="1", enrolled=True, bypass="debounce", entry=entry_factory("1"), now_ms=0
        ).reason
        == "bypass:debounce"
    )
    assert (
        gate.admit_or_buffer(
            org_id="1", env_id="1", enrolled=False, bypass=None, entry=entry_factory("1"), now_ms=0
        ).reason
        == "not_enrolled"
    )
    settings.MOLLIFIER = {**settings.MOLLIFIER, "ENABLED": False}
    assert (
        gate.admit_or_buffer(
            org_id="1", env_id="1", enrolled=True, bypass=None, entry=entry_factory("1"), now_ms=0
        ).reason
        == "disabled"
    )


def test_a_zero_threshold_is_refused(mollifier_on, settings):
    from django.core.exceptions import ImproperlyConfigured

    settings.MOLLIFIER = {**settings.MOLLIFIER, "TRIP_THRESHOLD": 0}
    with pytest.raises(ImproperlyConfigured):
        gate.admit_or_buffer(org_id="1", env_id="1", enrolled=True, bypass=None, entry=entry_factory("1"), now_ms=0)
