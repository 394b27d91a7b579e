"""The drainer's sink: buffered runs become TaskRun rows, a whole round in one transaction.

Fenced: the transaction first pins its entries in the buffer to its own transaction id
(``pg_current_xact_id()``) and writes only the entries still held by this drainer. A drainer that
stalled past its lease therefore writes nothing the API may have changed since; and whoever finds a
pinned entry later asks Postgres what became of that transaction (``settle``) instead of guessing.

The hot insert goes through psycopg directly (COPY into the table; on a conflict, COPY into a
temporary table and one ``INSERT … SELECT … ON CONFLICT DO NOTHING``), on Django's connection and inside Django's
transaction: Django's bulk_create was ~25× slower here (DESIGN §7), and so was building model
instances, so rows go from entry to tuple (``entry_values``). Everything else is the ORM.

Outcomes per entry:
- inserted as intended: QUEUED, DELAYED (delay still ahead), CANCELED (cancelled while buffered);
- a row with the same id exists: an earlier drain wrote it (a replay) → counted ``already``;
- the idempotency key is held by another live run meanwhile → a SYSTEM_FAILURE row naming it (a run
  cancelled, or whose own key had expired when the other took it, is written without the key);
- a terminal entry (attempts exhausted, unreadable snapshot) → a SYSTEM_FAILURE row as readers saw
  it, or, when even that cannot be written, a minimal one (ids and the reason, values cut to fit);
  a run cancelled before it failed is CANCELED either way (cancel wins), its error saying why;
- the environment was deleted → nothing to attach a row to: dropped, logged.
Batch members get their BatchTaskRunItem in the same transaction.
"""

import logging
from dataclasses import dataclass

import psycopg
from django.db import DatabaseError, IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.utils import timezone
from psycopg.errors import UniqueViolation

from mollifier import buffer, conf
from mollifier.buffer import Pin
from mollifier.codec import Entry
from mollifier.exceptions import SinkUnavailable
from mollifier.sink import Pin as PinCallback
from mollifier.sink import Settled, SinkReport
from runs import copy_rows
from runs.models import BatchTaskRun, RunStatus, RuntimeEnvironment, TaskRun
from runs.services import idempotency
from runs.services.batch_items import batch_link_pending, batch_move_pending, batch_refresh
from runs.services.keyed_markers import keyed_markers_clear
from runs.services.pins import settle_pins
from runs.snapshots import entry_values, minimal_failure_values, row_id, to_ms

logger = logging.getLogger(__name__)

COLUMNS = copy_rows.COLUMNS
STAGING = "mollifier_incoming_runs"


class TaskRunSink:
    """The sink ``MOLLIFIER["SINK"]`` names (see mollifier/sink.py for the contract)."""

    def write(self, entries: list[Entry], *, pin: PinCallback, last_resort: bool = False) -> SinkReport:
        """Write every entry this drainer still holds as a row, in one transaction (with
        ``last_resort``, terminal entries as minimal failure rows); raises SinkUnavailable when the
        database cannot be reached."""
        try:
            with transaction.atomic():
                kept = pin(_begin_fenced())
                held = [entry for entry in entries if entry.run_id in kept]
                report = _materialise(held, minimal=last_resort) if held else SinkReport()
        except (DatabaseError, InterfaceError, psycopg.Error) as error:  # Django's, and the raw COPY path's
            if not _database_unavailable(error):
                raise
            raise _unavailable(error) from error
        return report + SinkReport(fenced=len(entries) - len(held))

    def idle(self) -> None:
        """The drain has nothing left to write for now: link the batch items that waited on a run
        written by its last round (see ``_move_pending_items``), and delete the keyed markers of
        environments left with nothing buffered (runs/services/keyed_markers.py). Never raises for
        the database: the drain goes on, and the next round or a read of the batch links them."""
        try:
            batch_link_pending()
        except (DatabaseError, InterfaceError):
            logger.warning("mollifier.drain.pending_items_not_linked", exc_info=True)
        keyed_markers_clear()

    def settle(self, pins: list[Pin], *, lapsed: bool = False) -> dict[str, Settled]:
        """What became of the transactions that pinned these runs, by run id."""
        try:
            return settle_pins(pins, lapsed=lapsed)
        except (OperationalError, InterfaceError) as error:
            raise _unavailable(error) from error

    def answers(self) -> bool:
        """Does the database answer a trivial query right now? A connection that fails is closed:
        the next call, or round, opens a new one."""
        try:
            connection.close_if_unusable_or_obsolete()  # one a failure left broken: a new one now
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            return True
        except (DatabaseError, InterfaceError):
            connection.close()
            return False


# Failures that a trivial query meets too, for as long as they last: no connection (08; or no code
# at all: refused at connect, no answer within DB_ANSWER_TIMEOUT_MS), a server shutting down or
# starting up (57P01-57P03), no connection slot free (53300). Any other code is an answer that a
# SELECT 1 would not meet (a statement timeout under a lock, a full disk).
_SEEN_BY_A_PROBE = ("08", "57P01", "57P02", "57P03", "53300")


def _psycopg_error(error: Exception) -> psycopg.Error | None:
    """psycopg's own error: ``error`` itself (the raw COPY path), or the one Django wrapped."""
    return error if isinstance(error, psycopg.Error) else getattr(error, "__cause__", None)


def _unavailable(error: Exception) -> SinkUnavailable:
    sqlstate = getattr(_psycopg_error(error), "sqlstate", None) or ""
    return SinkUnavailable(str(error), answered=bool(sqlstate) and not sqlstate.startswith(_SEEN_BY_A_PROBE))


def _database_unavailable(error: Exception) -> bool:
    """The database, not the round, failed: no connection (08), a statement timeout or a shutdown
    (57), no resources (53), a lock not granted (55), the transaction ended for idling past the
    lease (25P03: the drainer stalled). Anything else may be one entry's fault."""
    if isinstance(error, (OperationalError, InterfaceError)):  # Django's: the connection or the server
        return True
    cause = _psycopg_error(error)
    if isinstance(cause, psycopg.InterfaceError):
        return True
    if not isinstance(cause, psycopg.Error):
        return False
    if cause.sqlstate is None:  # raised by the client: lost connection, or a value it could not send
        return isinstance(cause, psycopg.OperationalError)
    return cause.sqlstate[:2] in ("08", "53", "55", "57") or cause.sqlstate == "25P03"


def _move_pending_items() -> list[str]:
    """Inside the round's transaction: batch items that waited for a run this round writes (or an
    earlier one wrote) become items, at no transaction of their own (a drain at a low cap writes
    rounds of a few rows: a second transaction per round doubled what Postgres spent on them).
    Returns their batches' ids, for the round to refresh with its members' batches.

    Fails the round only when the round's transaction is gone with it (a savepoint of its own
    undoes anything else). An item committed by a batch request after this statement, on a run this
    round writes, is not seen here, and its request's own link ran before the row was visible: the
    next round links it, or ``idle`` when the drain has nothing left, or reading the batch."""
    try:
        with transaction.atomic():
            return batch_move_pending()
    except DatabaseError:
        if connection.needs_rollback:
            # The savepoint could not be rolled back: the connection is lost, or Postgres ended the
            # transaction (a drainer paused past its lease between the COPY and here). Swallowed,
            # the round's block would end in a rollback that raises nothing, and its runs would be
            # acked without their rows.
            raise
        logger.warning("mollifier.drain.pending_items_not_linked", exc_info=True)
        return []


def _begin_fenced() -> str:
    """Inside a transaction: bound how long it may sit idle (a frozen drainer's transaction is then
    rolled back by Postgres, which settles its pins), and return its id."""
    with connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL idle_in_transaction_session_timeout = {int(conf.drain_lease_ms())}")
        cursor.execute("SELECT pg_current_xact_id()::text")
        return cursor.fetchone()[0]


@dataclass(slots=True)
class _Run:
    """One entry's row in a round: its id, the row's bytes before ``materialised_at``
    (copy_rows.row_prefix), and its column values when the row was built here (None for a row
    written as the buffer stored it: its values are read from the entry only if a conflict needs them)."""

    entry: Entry
    id: str
    prefix: bytes
    values: dict | None


def _materialise(entries: list[Entry], *, minimal: bool = False) -> SinkReport:
    now = timezone.now()
    entries = _whole_unless_stored(entries, minimal=minimal)
    environments = RuntimeEnvironment.objects.by_ids(entry.env_id for entry in entries)
    runs: list[_Run] = []
    gone: list[Entry] = []
    if minimal:  # the last resort must not fail on a batch deleted meanwhile either
        batches = set(
            BatchTaskRun.objects.filter(id__in={e.batch_id for e in entries if e.batch_id}).values_list("id", flat=True)
        )
        for entry in entries:
            if entry.batch_id not in batches:
                entry.batch_id = entry.batch_index = None
    for entry in entries:
        environment = environments.get(entry.env_id)
        if environment is None:
            logger.warning("mollifier.drain.environment_gone run=%s env=%s", entry.run_id, entry.env_id)
            gone.append(entry)
            continue
        stored = None if minimal else copy_rows.prefix_of(entry.row)
        if stored is not None:  # unchanged since it was buffered: the row as it was encoded then
            runs.append(_Run(entry, row_id(entry), stored, None))
            continue
        values = _values(entry, environment=environment, now=now, minimal=minimal)
        runs.append(_Run(entry, values["id"], copy_rows.row_prefix(values), values))

    if gone:  # a trace for operators: these leave the buffer without a row (mollifier_status)
        buffer.note_dropped(gone, now_ms=to_ms(now))
    inserted = _insert([(run.id, run.prefix) for run in runs], now=now)
    pending = [run for run in runs if run.id not in inserted]
    existing = set(TaskRun.objects.filter(id__in=[run.id for run in pending]).values_list("id", flat=True))
    contested = [run for run in pending if run.id not in existing]
    resolved = _resolve_key_conflicts(_values_of(contested, environments, now=now), now=now) if contested else []

    _link_batch_items(runs, now=now, also_refresh=_move_pending_items())
    written = [run.values for run in runs if run.id in inserted] + resolved
    failed = sum(values is not None and values["status"] == RunStatus.SYSTEM_FAILURE for values in written)
    return SinkReport(inserted=len(written) - failed, already=len(existing), failed=failed, dropped=len(gone))


def _whole_unless_stored(entries: list[Entry], *, minimal: bool) -> list[Entry]:
    """Entries the drain read from their stored row alone (envelope only) whose row will not be
    written as stored (another table layout: a migration since; or a last resort) are read whole:
    their row is built from the snapshot and fields, never from the envelope."""
    unusable = {
        entry.run_id
        for entry in entries
        if entry.row is not None and entry.snapshot is None and (minimal or copy_rows.prefix_of(entry.row) is None)
    }
    if not unusable:
        return entries
    whole = {entry.run_id: entry for entry in buffer.reread([e for e in entries if e.run_id in unusable])}
    return [
        whole.get(entry.run_id) or entry for entry in entries if entry.run_id not in unusable or entry.run_id in whole
    ]


def _values(entry: Entry, *, environment: RuntimeEnvironment, now, minimal: bool = False) -> dict:
    if minimal and (entry.terminal_error or entry.snapshot is None):
        values = minimal_failure_values(entry, environment=environment, now=now)
    else:
        values = entry_values(entry, environment=environment, now=now)
    values["materialised_at"] = now
    return values


def _values_of(runs: list[_Run], environments: dict, *, now) -> list[dict]:
    """The column values of ``runs``; those written as stored are read from their entries again
    (a conflict, rare: the entries are still leased to this drainer, so unchanged)."""
    whole = {entry.run_id: entry for entry in buffer.reread([run.entry for run in runs if run.values is None])}
    values = []
    for run in runs:
        if run.values is not None:
            values.append(run.values)
        elif (entry := whole.get(run.entry.run_id)) is not None:
            values.append(_values(entry, environment=environments[entry.env_id], now=now))
        else:  # gone from the buffer while leased: acked meanwhile by a settle, so its row exists
            logger.warning("mollifier.drain.entry_gone run=%s", run.entry.run_id)
    return values


def _insert(rows: list[tuple[str, bytes]], *, now) -> set[str]:
    """Insert the rows (id, copy_rows.row_prefix) that do not conflict; returns the ids inserted.

    A round rarely conflicts (a replay of a committed round, an idempotency key taken meanwhile),
    so the rows are first COPied straight into the table, inside a savepoint. A unique violation
    undoes only that attempt; the rows then go through a session temp table and one
    ``INSERT … SELECT … ON CONFLICT DO NOTHING``, which covers both the id and the idempotency-key
    constraints. Going through the temp table every time cost about as much as the COPY itself."""
    if not rows:
        return set()
    data = copy_rows.copy_data([prefix for _, prefix in rows], copy_rows.last_column(now))
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                # The table's lock is taken by a statement of its own: waiting for it inside the
                # COPY would leave the session "active" (a COPY waiting on its client), which
                # idle_in_transaction_session_timeout cannot end if this process then stalls.
                cursor.execute(f"LOCK TABLE {TaskRun._meta.db_table} IN ROW EXCLUSIVE MODE")
                _copy(cursor.cursor, TaskRun._meta.db_table, data)
        return {run_id for run_id, _ in rows}
    except UniqueViolation:
        pass
    with connection.cursor() as cursor:
        raw = cursor.cursor  # the psycopg cursor, inside Django's transaction
        raw.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {STAGING} (LIKE {TaskRun._meta.db_table} INCLUDING DEFAULTS) "
            "ON COMMIT DELETE ROWS"
        )
        _copy(raw, STAGING, data)
        raw.execute(
            f"INSERT INTO {TaskRun._meta.db_table} ({COLUMNS}) SELECT {COLUMNS} FROM {STAGING} "
            "ON CONFLICT DO NOTHING RETURNING id"
        )
        inserted = {row[0] for row in raw.fetchall()}
        raw.execute(f"TRUNCATE {STAGING}")  # a retried key-conflict pass reuses the table
    return inserted


def _copy(raw, table: str, data: bytes) -> None:
    with raw.copy(f"COPY {table} ({COLUMNS}) FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.write(data)


def _insert_values(rows: list[dict], *, now) -> set[str]:
    return _insert([(values["id"], copy_rows.row_prefix(values)) for values in rows], now=now)


def _resolve_key_conflicts(contested: list[dict], *, now) -> list[dict]:
    """Rows refused because another run holds their idempotency key: release stale holders and
    insert again; for live holders write a SYSTEM_FAILURE row that names the winner, unless the
    run lets go of its key (``_lets_go_of_its_key``). Returns the rows written (for the report).

    A row refused for its request key (a retry that reached Postgres while Redis did not answer made
    a run of its own) is written without it: both runs exist, the retry's row answers the request."""
    _drop_taken_request_keys(contested)
    holders = {
        (run.environment_id, run.task_identifier, run.idempotency_key): run
        for run in TaskRun.objects.filter(
            idempotency_key__in={values["idempotency_key"] for values in contested if values["idempotency_key"]},
            environment_id__in={values["environment_id"] for values in contested},
        )
    }
    retry, failures = [], []
    for values in contested:
        scope = (values["environment_id"], values["task_identifier"], values["idempotency_key"])
        holder = holders.get(scope)
        if holder is not None and not idempotency.key_is_live(run=holder, now=now):
            idempotency.idempotency_key_clear(
                environment_id=scope[0], task_identifier=scope[1], key=scope[2], only_internal_id=holder.id
            )
            holder = None
        if holder is None:
            retry.append(values)
        elif _lets_go_of_its_key(values, holder=holder):
            retry.append(_without_key(values))
        else:
            failures.append(_failure_row(values, winner=holder.friendly_id, now=now))
    inserted = _insert_values(retry, now=now)
    # A row refused twice (the key was taken again in between) is written as a failure too.
    failures += [_failure_row(values, winner=None, now=now) for values in retry if values["id"] not in inserted]
    written = _insert_values(failures, now=now)
    if refused := [values["id"] for values in failures if values["id"] not in written]:
        # Refused even as a failure row: its request key was taken after it was checked (a retry
        # that reached Postgres meanwhile). Acked without a row, the run would be lost; the round
        # fails instead, and the run is written again once that holder can be seen.
        raise IntegrityError(f"runs {refused} were refused even as failure rows")
    return [values for values in retry if values["id"] in inserted] + failures


def _lets_go_of_its_key(values: dict, *, holder: TaskRun) -> bool:
    """A run whose key a live run holds is written as it is, without the key, when it no longer
    held the key itself when the holder took it (its own key had expired by then: the holder took
    it rightly), or when it was cancelled (the cancel the API answered wins over the key). Only a
    live key taken from a live run makes a SYSTEM_FAILURE row: both would otherwise run."""
    expires_at = values["idempotency_key_expires_at"]
    return values["status"] == RunStatus.CANCELED or (expires_at is not None and expires_at <= holder.created_at)


def _drop_taken_request_keys(contested: list[dict]) -> None:
    keyed = [values for values in contested if values["request_key"]]
    if not keyed:
        return
    taken = set(
        TaskRun.objects.filter(
            environment_id__in={values["environment_id"] for values in keyed},
            request_key__in={values["request_key"] for values in keyed},
        ).values_list("environment_id", "task_identifier", "request_key")
    )
    for values in keyed:
        if (values["environment_id"], values["task_identifier"], values["request_key"]) in taken:
            logger.warning("mollifier.drain.request_key_taken run=%s", values["id"])
            values["request_key"] = None


def _without_key(values: dict) -> dict:
    return {**values, "idempotency_key": None, "idempotency_key_expires_at": None, "idempotency_key_options": None}


def _failure_row(values: dict, *, winner: str | None, now) -> dict:
    return {
        **_without_key(values),
        "status": RunStatus.SYSTEM_FAILURE,
        "error": {
            "name": "IdempotencyKeyTaken",
            "message": f"Idempotency key {values['idempotency_key']!r} was taken by {winner or 'another run'} "
            "while this run waited in the buffer.",
        },
        "completed_at": now,
        "updated_at": now,
    }


def _link_batch_items(runs: list[_Run], *, now, also_refresh: list[str]) -> None:
    """Batch members get their items; their batches and ``also_refresh`` are refreshed together
    (one ordered lock on the batches: two drainers never wait on each other's in a cycle)."""
    members = [run for run in runs if run.entry.batch_id and run.entry.batch_index is not None]
    if members:
        with connection.cursor() as cursor:
            cursor.execute(
                'INSERT INTO runs_batchtaskrunitem (batch_id, task_run_id, "index", created_at) '
                "SELECT b, r, i, %s FROM unnest(%s::text[], %s::text[], %s::int[]) AS t(b, r, i) "
                'ON CONFLICT (batch_id, "index") DO NOTHING',
                [
                    now,
                    [run.entry.batch_id for run in members],
                    [run.id for run in members],
                    [run.entry.batch_index for run in members],
                ],
            )
    if batch_ids := {run.entry.batch_id for run in members if run.entry.batch_id} | set(also_refresh):
        batch_refresh(batch_ids=batch_ids, now=now)
