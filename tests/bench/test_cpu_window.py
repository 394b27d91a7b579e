"""P2's CPU accounting (bench/measures.py CpuWindow): what the clients, Redis and Postgres each spent."""

import subprocess
import sys
import time

import pytest
import redis
from django.conf import settings
from django.db import connection

from bench.measures import CpuWindow

pytestmark = pytest.mark.django_db

# A client that waits (idle) for a line, burns 0.4 s of CPU, says so, then waits until told to exit.
BUSY_CLIENT = (
    "import sys, time\n"
    "sys.stdin.readline()\n"
    "end = time.process_time() + 0.4\n"
    "while time.process_time() < end: pass\n"
    "sys.stdout.write('done\\n'); sys.stdout.flush(); sys.stdin.read()"
)


def _redis_cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def test_each_part_is_charged_what_it_spent():
    # A client of its own for the burn: the suite's has a short socket timeout.
    patient = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=30)
    client = subprocess.Popen([sys.executable, "-c", BUSY_CLIENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        redis_before = _redis_cpu_s(patient)
        with CpuWindow([client.pid]) as window:
            client.stdin.write(b"go\n")
            client.stdin.flush()
            for _ in range(6):  # short scripts: Redis answers others in between
                patient.eval("local n = 0 for i = 1, 5000000 do n = n + i end return n", 0)
            with connection.cursor() as cursor:
                cursor.execute("SELECT sum(x) FROM generate_series(1, 3000000) AS x")
            assert client.stdout.readline() == b"done\n"
            time.sleep(0.05)  # the kernel's tick accounting catches up
        redis_spent = _redis_cpu_s(patient) - redis_before
        figures = window.per_row_us(1_000_000)  # per row of a million rows: seconds read as µs
    finally:
        client.communicate(b"")
        patient.close()

    assert 0.35 <= window.clients_s <= 1.0
    assert window.redis_s == pytest.approx(redis_spent, abs=0.05)  # as Redis counts itself
    assert redis_spent >= 0.05
    assert window.postgres_s is not None and 0.05 <= window.postgres_s <= 5
    assert figures["clients"] == pytest.approx(window.clients_s, abs=0.05)
    assert figures["total"] == pytest.approx(figures["clients"] + figures["redis"] + figures["postgres"], abs=0.2)


def test_without_pids_the_window_charges_this_process():
    with CpuWindow(None) as window:
        end = time.process_time() + 0.2
        while time.process_time() < end:
            pass

    assert window.clients_s >= 0.15
