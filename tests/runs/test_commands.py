"""What the management commands print: keys a script can take from the last line, the settings each
command runs with, and counts that agree and read as English (issue 14, the newcomer's walk)."""

import io
import subprocess
import sys

import pytest
from django.core.management import CommandError, call_command

from mollifier import buffer
from mollifier.clock import now_ms
from runs.models import Organization, RuntimeEnvironment
from runs.services.flags import mollifier_enrolled
from tests.buffering import fill_buffer
from tests.factories import EnvironmentFactory
from tests.server import ROOT, server_env

pytestmark = pytest.mark.django_db


def run_command(*args: str, **options) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


# --- create_environment ------------------------------------------------------------------------------


def test_create_environment_prints_the_key_last_and_says_the_organisation_is_not_enrolled():
    out, _ = run_command("create_environment", "--org", "acme", "--project", "web", "--env", "prod")

    lines = out.splitlines()
    environment = RuntimeEnvironment.objects.get(organization__slug="acme", project__slug="web", slug="prod")
    assert lines[0].startswith("Environment acme/web/prod created (project ref proj_")
    assert "acme: not enrolled in the mollifier" in lines[1] and "--enroll" in lines[1]
    assert lines[-1].startswith("tr_prod_") and RuntimeEnvironment.hash_api_key(lines[-1]) == environment.api_key_hash
    assert not mollifier_enrolled(environment.organization)


def test_create_environment_enroll_enrols_the_organisation():
    out, _ = run_command("create_environment", "--org", "acme", "--project", "web", "--env", "dev", "--enroll")

    assert "acme: enrolled in the mollifier" in out
    assert out.splitlines()[-1].startswith("tr_dev_")
    assert mollifier_enrolled(Organization.objects.get(slug="acme"))


def test_create_environment_again_fails_with_an_explicit_last_line_and_rotate_makes_a_new_key():
    first = run_command("create_environment", "--org", "acme", "--project", "web", "--env", "prod")[0]
    out = io.StringIO()

    with pytest.raises(CommandError, match=r"already exists.*--rotate"):
        call_command("create_environment", "--org", "acme", "--project", "web", "--env", "prod", stdout=out)

    assert out.getvalue().splitlines()[-1] == "no key: acme/web/prod already exists (--rotate makes a new one)"
    rotated = run_command("create_environment", "--org", "acme", "--project", "web", "--env", "prod", "--rotate")[0]
    new_key = rotated.splitlines()[-1]
    assert new_key.startswith("tr_prod_") and new_key != first.splitlines()[-1]
    environment = RuntimeEnvironment.objects.get(organization__slug="acme", slug="prod")
    assert RuntimeEnvironment.hash_api_key(new_key) == environment.api_key_hash


@pytest.mark.django_db(transaction=True)
def test_create_environment_as_a_script_sees_it_exit_1_with_the_reason_on_stderr():
    """`KEY=$(manage.py create_environment … | tail -1)`: a key, or a line that says there is none."""

    def create() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", "create_environment", "--org", "acme", "--project", "web", "--env", "prod"],
            cwd=ROOT,
            env=server_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    created, again = create(), create()

    assert created.returncode == 0 and created.stdout.splitlines()[-1].startswith("tr_prod_"), created.stderr
    assert again.returncode == 1
    assert again.stdout.splitlines()[-1].startswith("no key: acme/web/prod already exists")
    assert "--rotate" in again.stderr and "tr_prod_" in again.stderr  # the prefix of the key it keeps


# --- the settings each command runs with ---------------------------------------------------------------


def test_status_drain_and_sweep_each_print_the_settings_they_run_with(settings):
    settings.MOLLIFIER = {
        **settings.MOLLIFIER,
        "ENABLED": True,
        "TRIP_THRESHOLD": 5,
        "DRAIN_MAX_ROWS_PER_SEC": 1234,
        "DRAIN_BATCH_SIZE": 17,
        "STALE_AFTER_MS": 90_000,
    }

    status = run_command("mollifier_status")[0]
    drain = run_command("mollifier_drain", "--once", "--quiet")[0]
    sweep = run_command("mollifier_sweep")[0]
    sweep_json = run_command("mollifier_sweep", "--json")[0]

    assert status.startswith("mollifier ON; trip 5 per 200 ms") and "drain cap 1,234 rows/s" in status
    assert drain.startswith("mollifier_drain: batch 17 per environment, cap 1,234 rows/s")  # --quiet included
    assert "older than 90s (MOLLIFIER_STALE_AFTER_MS" in sweep
    assert '"stale_after_ms": 90000' in sweep_json


# --- counts that agree and read as English -------------------------------------------------------------


def test_status_total_is_the_tables_sum_in_the_singular_for_one():
    environment = EnvironmentFactory()
    fill_buffer(environment, 1)

    out = run_command("mollifier_status")[0]

    assert "total waiting: 1 in 1 organisation, 1 environment," in out
    row = next(line for line in out.splitlines() if line.startswith(str(environment)))
    assert row.split()[1] == "1"


def test_status_total_agrees_with_the_table_while_a_drainer_holds_runs():
    """The table counts leased runs as waiting; so does the total (33 against 32 was the bug)."""
    first, second = EnvironmentFactory(), EnvironmentFactory()
    fill_buffer(first, 20)
    fill_buffer(second, 13)
    buffer.pop(org_id=str(first.organization_id), env_id=str(first.pk), limit=1, lease_ms=60_000, now_ms=now_ms())

    out = run_command("mollifier_status")[0]

    rows = [line.split() for line in out.splitlines() if line.startswith((str(first), str(second)))]
    table_total = sum(int(row[1].replace(",", "")) for row in rows)
    assert table_total == 33
    assert "total waiting: 33 in 2 organisations, 2 environments" in out


def test_sweep_and_drain_say_one_in_the_singular():
    fill_buffer(EnvironmentFactory(), 1)

    sweep = run_command("mollifier_sweep")[0]
    drain = run_command("mollifier_drain", "--once", "--quiet")[0]

    assert "sweep: 1 waiting in 1 environment of 1 organisation; 0 older than" in sweep
    assert "0 expired leases reclaimed" in sweep
    assert "1 run acked" in drain and "1 inserted" in drain and "0 SYSTEM_FAILURE rows" in drain
    assert "0 retries" in drain and "0 leases reclaimed" in drain
