"""Property-based: generated payloads, metadata, tags and options — hostile ones included (NaN and
infinities, lone surrogates, NUL, deep nesting, huge integers, over-long strings, huge durations) —
go through trigger → read → list → drain → read, in both stores. Never a 5xx; whatever is accepted
comes back as it went in, before and after the drain.

FUZZ_EXAMPLES (default 40 per store) widens the search."""

import json
import os

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mollifier import keys
from mollifier.client import get as redis_client
from mollifier.drainer import Drainer
from runs.models import TaskRun

pytestmark = pytest.mark.django_db

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
HOSTILE_TEXT = ["\ud800", "a\udfffb", "\x00", "a\x00", "𝄞", "zaĺ ✓", "x" * 300, "", " "]
HOSTILE_NUMBERS = [float("nan"), float("inf"), -float("inf"), 1.7e308, -0.0, 2**64, 10**50, 5e-324]

text = st.one_of(st.text(max_size=20), st.sampled_from(HOSTILE_TEXT))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.sampled_from(HOSTILE_NUMBERS), text
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(text, children, max_size=4)),
    max_leaves=12,
)
durations = st.one_of(
    st.sampled_from(["10s", "1h30m", "2d", "99999999999999999999d", "1" * 80 + "s", "0s", "soon", "", "2026-13-01"]),
    st.integers(-5, 10**12).map(lambda n: f"{n}s"),
)


def deep(depth: int):
    return [deep(depth - 1)] if depth else []


options_strategy = st.fixed_dictionaries(
    {},
    optional={
        "tags": st.one_of(text, st.lists(text, max_size=12)),
        "metadata": st.one_of(st.dictionaries(text, json_values, max_size=4), json_values),
        "ttl": st.one_of(durations, st.integers(-1, 10**12)),
        "delay": durations,
        "idempotencyKeyTTL": durations,
        "idempotencyKey": st.one_of(text, st.sampled_from(["漢" * 1500, "k" * 2049])),
        "concurrencyKey": st.one_of(text, st.integers(), st.sampled_from(HOSTILE_NUMBERS)),
        "maxAttempts": st.integers(-1, 200),
        "priority": st.integers(-1, 10**7),
        "queue": st.fixed_dictionaries({"name": text}),
        "region": text,
        "lockToVersion": text,
        "machine": st.sampled_from(["small-1x", "huge-99x"]),
    },
)


def body_of(payload, options, deep_payload: bool) -> bytes:
    """The request as the wire would carry it: JSON text, non-finite numbers as the tokens Python
    writes (NaN, Infinity), lone surrogates escaped."""
    if deep_payload:
        payload = deep(80)
    wire = {
        "payload": json.dumps({"json": payload}, allow_nan=True),
        "options": {"payloadType": "application/super+json", **options},
    }
    return json.dumps(wire, allow_nan=True).encode()


@pytest.mark.parametrize("store", ["direct", "buffered"])
def test_what_the_api_accepts_comes_back_as_it_went_in(api, enrolled, store):
    tripped = keys.tripped(str(enrolled.organization_id), str(enrolled.pk))

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(payload=json_values, options=options_strategy, deep_payload=st.booleans())
    def check(payload, options, deep_payload):
        redis_client().flushdb()
        TaskRun.objects.all().delete()
        if store == "buffered":
            redis_client().set(tripped, "1", px=60_000)
        response = api.generic(
            "POST",
            "/api/v1/tasks/fuzzed/trigger",
            body_of(payload, options, deep_payload),
            content_type="application/json",
        )
        event(f"status {response.status_code}")
        assert response.status_code in (200, 400, 413, 422), (response.status_code, response.content[:300])
        assert isinstance(response.json()["error" if response.status_code != 200 else "id"], str)
        if response.status_code != 200:
            assert not TaskRun.objects.exists()
            return
        run_id = response.json()["id"]
        assert (response.headers.get("x-mollifier") == "buffered") == (store == "buffered")
        before = api.get(f"/api/v3/runs/{run_id}")
        assert before.status_code == 200, before.content[:300]
        listed = api.get("/api/v1/runs")
        assert listed.status_code == 200 and run_id in [run["id"] for run in listed.json()["data"]]
        assert before.json()["payload"] == json.loads(json.dumps(payload))  # what went in
        Drainer().run(once=True)
        after = api.get(f"/api/v3/runs/{run_id}")
        shown = {key: value for key, value in before.json().items() if key != "mollifier"}  # the write estimate
        assert after.status_code == 200 and after.json() == shown  # the drain wrote what was shown
        assert api.get("/api/v1/runs").status_code == 200

    check()
