"""P2's CPU accounting (bench/measures.py CpuWindow): what the clients, Redis and Postgres each spent."""

import subprocess
import sys
import time

import pytest
from django.db import connection

from bench import pgprobe
from bench.measures import CpuWindow
from mollifier.client import get as redis_client

pytestmark = pytest.mark.django_db

# A client that burns 0.4 s of CPU, then waits (idle) until told to exit.
BUSY_CLIENT = (
    "import sys, time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass\nsys.stdin.read()"
)


def test_each_part_is_charged_what_it_spent():
    client = subprocess.Popen([sys.executable, "-c", BUSY_CLIENT], stdin=subprocess.PIPE)
    try:
        with CpuWindow([client.pid]) as window:
            redis_client().eval("local n = 0 for i = 1, 30000000 do n = n + i end return n", 0)
            with connection.cursor() as cursor:
                cursor.execute("SELECT sum(x) FROM generate_series(1, 3000000) AS x")
            deadline = time.monotonic() + 10
            while (pgprobe.process_ticks(client.pid) or 0) / pgprobe.TICKS_PER_S < 0.4 and time.monotonic() < deadline:
                time.sleep(0.01)
        figures = window.per_row_us(1_000_000)  # per row of a million rows: seconds read as µs
    finally:
        client.communicate(b"")

    assert 0.35 <= window.clients_s <= 1.0
    assert window.redis_s is not None and window.redis_s >= 0.05
    assert window.postgres_s is not None and window.postgres_s >= 0.05
    assert figures["clients"] == pytest.approx(window.clients_s, abs=0.05)
    assert figures["total"] == pytest.approx(figures["clients"] + figures["redis"] + figures["postgres"], abs=0.2)


def test_without_pids_the_window_charges_this_process():
    with CpuWindow(None) as window:
        end = time.process_time() + 0.2
        while time.process_time() < end:
            pass

    assert window.clients_s >= 0.15
