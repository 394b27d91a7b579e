"""Filling the buffer quickly for drain tests: real entries of real environments, accepted by the
real accept script (pipelined), as the trigger path would have buffered them."""

import psycopg
from django.utils import timezone

from mollifier import buffer, scripts
from mollifier.client import get as redis_client
from mollifier.clock import now_ms
from mollifier.sink import SinkReport
from runs.api.serializers import trigger_options_from
from runs.services.keyed_markers import keyed_marker_make_sure
from runs.services.materialise import TaskRunSink
from runs.services.trigger import task_run_prepare
from runs.snapshots import run_to_entry, to_ms
from tests.server import database_url


def fill_buffer(
    environment, count: int, *, task: str = "hello-world", batch=None, payload=None, **options
) -> list[str]:
    """Buffer ``count`` runs of ``environment``; returns their run ids (run_…) in trigger order.

    ``payload`` is the wire payload (a string, as the SDK sends it); ``options`` the trigger options."""
    now = timezone.now()
    opts = trigger_options_from({"payload": payload if payload is not None else {"n": 1}, "options": options}, now=now)
    redis = redis_client()
    # As the trigger path does before it buffers a keyed run: Postgres's keyed marker first.
    marker_gen = keyed_marker_make_sure(environment) if opts.idempotency_key else None
    run_ids = []
    for start in range(0, count, 1000):
        pipe = redis.pipeline(transaction=False)
        entries = []
        for i in range(start, min(count, start + 1000)):
            run = task_run_prepare(environment=environment, task_identifier=task, options=opts, now=now, batch=batch)
            entries.append(run_to_entry(run, batch_index=i if batch else None))
            scripts.ACCEPT(
                keys=buffer.accept_keys(entries[-1]),
                args=[to_ms(now), *buffer.accept_args(entries[-1], marker_gen=marker_gen)],
                client=pipe,
            )
        for reply, entry in zip(pipe.execute(), entries):
            assert buffer.accept_result(reply, entry, client=redis).status == "accepted"
            run_ids.append(entry.run_id)
    return run_ids


def write_round(entries, *, lease_ms: int = 60_000) -> SinkReport:
    """What a drainer does with a leased round, without its ack: a fenced write through the real
    sink (entries from ``buffer.pop``)."""
    return TaskRunSink().write(
        entries, pin=lambda txid: buffer.pin(entries, txid=txid, now_ms=now_ms(), lease_ms=lease_ms)
    )


def pin_in_open_transaction(entries):
    """Pin leased entries to a transaction of another connection that stays open (returned), as a
    drainer's mid-write."""
    connection = psycopg.connect(database_url())
    txid = connection.execute("SELECT pg_current_xact_id()::text").fetchone()[0]
    assert buffer.pin(entries, txid=txid, now_ms=now_ms(), lease_ms=60_000) == {entry.run_id for entry in entries}
    return connection
