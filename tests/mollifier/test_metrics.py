"""Labelled counters exist at zero from a process's start (the Prometheus convention), so a rate() or
an alert on, say, drain failures sees 0 rather than no series until the first failure (issue 14)."""

import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server import ROOT, server_env

# The documented label values (README: /metrics), written out here rather than read from the code.
EXPECTED = {
    "mollifier_drained_rows_total": [{"outcome": o} for o in ("inserted", "already", "failed", "dropped", "fenced")],
    "mollifier_drain_failures_total": [
        {"cause": c}
        for c in (
            "database_unavailable",
            "entry_failed",
            "marked_terminal",
            "parked",
            "ack_failed",
            "redis_unavailable",
        )
    ],
    "mollifier_claim_outcomes_total": [
        {"outcome": o} for o in ("claimed", "buffered", "resolved", "unavailable", "timeout")
    ],
    "mollifier_gate_decisions_total": [
        {"decision": "pass_through", "reason": "under_threshold"},
        {"decision": "pass_through", "reason": "redis_error"},
        {"decision": "pass_through", "reason": "bypass:trigger_and_wait"},
        *(
            {"decision": decision, "reason": reason}
            for decision in ("mollify", "refused", "shadow")
            for reason in ("per_env_rate", "global_rate")
        ),
    ],
}

SCRAPE = (
    "import django; django.setup(); from django.test import Client; "
    "response = Client().get('/metrics', HTTP_HOST='localhost'); assert response.status_code == 200, response; "
    "print(response.content.decode())"
)


def scrape_a_fresh_process(**env: str) -> dict[tuple[str, tuple], float]:
    """/metrics of a process that has done nothing else: {(sample name, labels): value}."""
    environ = server_env(METRICS_TOKEN="")
    environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    environ.update(env)
    result = subprocess.run(
        [sys.executable, "-c", SCRAPE], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(result.stdout)
        for sample in family.samples
    }


@pytest.mark.parametrize("multiprocess", [False, True], ids=["one process", "PROMETHEUS_MULTIPROC_DIR"])
def test_labelled_counters_start_at_zero(multiprocess, tmp_path):
    samples = scrape_a_fresh_process(**({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)} if multiprocess else {}))

    for name, label_sets in EXPECTED.items():
        for labels in label_sets:
            key = (name, tuple(sorted(labels.items())))
            assert samples.get(key) == 0.0, f"{name}{labels} is {samples.get(key, 'absent')}"
    assert samples[("mollifier_leases_reclaimed_total", ())] == 0.0
