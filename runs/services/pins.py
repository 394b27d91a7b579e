"""Settling pins: what became of the drainer transaction a buffered run is pinned to.

A drainer pins the entries of a round to its Postgres transaction before it writes their rows (see
mollifier/lua/lib/lease.lua). Whoever finds a pin later (another drainer once the lease expired, or
a change to the run) asks Postgres, which knows: ``pg_xact_status`` of the transaction id.
"""

from django.db import connection

from mollifier.buffer import Pin
from mollifier.sink import Settled
from runs import ids
from runs.models import TaskRun

_XACT_STATUS = {"committed": Settled.COMMITTED, "aborted": Settled.NOT_COMMITTED, "in progress": Settled.RUNNING}


def settle_pins(pins: list[Pin]) -> dict[str, Settled]:
    """By run id: did the drainer transaction each run is pinned to commit (its row exists), not
    commit, or is it still running?"""
    txids = sorted({item.txid for item in pins})
    if not txids:
        return {}
    with connection.cursor() as cursor:
        cursor.execute("SELECT t, pg_xact_status(t::xid8) FROM unnest(%s::text[]) AS t", [txids])
        status = {txid: _XACT_STATUS[value] for txid, value in cursor.fetchall() if value in _XACT_STATUS}
    settled = {item.run_id: status[item.txid] for item in pins if item.txid in status}
    # Postgres no longer knows a transaction that old: its rows tell.
    unknown = [item.run_id for item in pins if item.run_id not in settled]
    if unknown:
        internal_ids = {run_id: ids.from_friendly(ids.RUN, run_id) for run_id in unknown}
        written = set(
            TaskRun.objects.filter(id__in=list(filter(None, internal_ids.values()))).values_list("id", flat=True)
        )
        for run_id, internal in internal_ids.items():
            settled[run_id] = Settled.COMMITTED if internal in written else Settled.NOT_COMMITTED
    return settled
