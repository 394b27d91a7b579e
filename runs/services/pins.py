"""Settling pins: what became of the drainer transaction a buffered run is pinned to.

A drainer pins the entries of a round to its Postgres transaction before it writes their rows (see
mollifier/lua/lib/lease.lua). Whoever finds a pin later (another drainer once the lease expired, or
a change to the run) asks Postgres, which knows: ``pg_xact_status`` of the transaction id.
"""

import logging

from django.db import DataError, ProgrammingError, connection, transaction

from mollifier import conf
from mollifier.buffer import Pin
from mollifier.sink import Settled
from runs import ids
from runs.models import TaskRun

logger = logging.getLogger(__name__)

_XACT_STATUS = {"committed": Settled.COMMITTED, "aborted": Settled.NOT_COMMITTED, "in progress": Settled.RUNNING}


def settle_pins(pins: list[Pin], *, lapsed: bool = False) -> dict[str, Settled]:
    """By run id: did the drainer transaction each run is pinned to commit (its row exists), not
    commit, or is it still running? With ``lapsed`` (the pins' leases have lapsed), a transaction
    whose drainer stalled mid-write is ended first (``_end_stalled_writers``)."""
    txids = sorted({item.txid for item in pins})
    if not txids:
        return {}
    status = _status(txids)
    running = [txid for txid, value in status.items() if value == Settled.RUNNING]
    if lapsed and running and _end_stalled_writers(running):
        status.update(_status(running))
    settled = {item.run_id: status[item.txid] for item in pins if item.txid in status}
    # The rows tell what Postgres cannot: a transaction too old for it to know, or not yet reached
    # (its WAL lost: a failover, a restore), or one it says committed that wrote no row for the run
    # (the same id given again after such a loss). A run whose environment was gone got no row
    # either: given back, it is dropped again by the next round.
    unsure = [item.run_id for item in pins if settled.get(item.run_id, Settled.COMMITTED) == Settled.COMMITTED]
    if unsure:
        internal_ids = {run_id: ids.from_friendly(ids.RUN, run_id) for run_id in unsure}
        written = set(
            TaskRun.objects.filter(id__in=list(filter(None, internal_ids.values()))).values_list("id", flat=True)
        )
        for run_id, internal in internal_ids.items():
            settled[run_id] = Settled.COMMITTED if internal in written else Settled.NOT_COMMITTED
    return settled


def _status(txids: list[str]) -> dict[str, Settled]:
    """What Postgres says of each transaction it knows. An id it has not reached (its WAL lost: a
    failover, a restore) fails ``pg_xact_status`` for the whole query: then each id is asked on its
    own, and such an id is left out."""
    try:
        with transaction.atomic(), connection.cursor() as cursor:  # a savepoint, inside a transaction
            cursor.execute("SELECT t, pg_xact_status(t::xid8) FROM unnest(%s::text[]) AS t", [txids])
            rows = cursor.fetchall()
    except DataError:  # "transaction ID … is in the future"
        if len(txids) == 1:
            logger.warning("mollifier.drain.pin_unknown_to_postgres txid=%s", txids[0])
            return {}
        return {txid: value for one in txids for txid, value in _status([one]).items()}
    return {txid: _XACT_STATUS[value] for txid, value in rows if value in _XACT_STATUS}


def _end_stalled_writers(txids: list[str]) -> bool:
    """End the running transactions ``txids`` whose statement (a COPY), or idle spell, has lasted
    longer than a lease and which wait for their drainer. A drainer frozen (SIGSTOP, a long pause)
    or cut off while its COPY streams leaves its backend waiting for data: Postgres applies neither
    ``statement_timeout`` nor ``idle_in_transaction_session_timeout`` to that wait, and TCP
    keepalives do not fire while the drainer's kernel still answers, so its runs would stay pinned
    until it woke. Ended, the transaction rolls back (or, ended as it committed, had committed: the
    status read next says which), and the runs are given back to a drainer that is alive. A COPY
    that is slow but alive, past a lease, is ended too: its round is redone. Returns whether any
    was ended."""
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid, wait_event, state_change < clock_timestamp() - make_interval(secs => %s)"
                " FROM pg_stat_activity WHERE backend_xid = ANY(SELECT xid(t::xid8) FROM unnest(%s::text[]) AS t)",
                [conf.drain_lease_ms() / 1000, txids],
            )
            backends = cursor.fetchall()
            stalled = [pid for pid, wait_event, past_lease in backends if wait_event == "ClientRead" and past_lease]
            if hidden := [pid for pid, wait_event, past_lease in backends if past_lease is None]:
                # Another role's session, and this one may not read its state (pg_read_all_stats).
                logger.warning("mollifier.drain.stalled_writer_unseen pids=%s", hidden)
            if stalled:
                cursor.execute("SELECT pid, pg_terminate_backend(pid, 1000) FROM unnest(%s::int[]) AS pid", [stalled])
                for pid, exited in cursor.fetchall():
                    logger.warning("mollifier.drain.stalled_writer_ended pid=%s exited=%s", pid, exited)
    except ProgrammingError as error:  # not allowed to signal it: it ends when it wakes, as before
        logger.warning("mollifier.drain.stalled_writer_not_ended error=%s", error)
        return False
    return bool(stalled)
