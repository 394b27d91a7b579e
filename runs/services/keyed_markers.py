"""Keyed markers: Postgres's record that runs with an idempotency key may wait in an environment's
buffer (runs.models.KeyedBufferMarker).

While Redis answers, the pre-gate claim and the buffer's own lookup keep an idempotency key to one
run across both stores. While it does not, a keyed trigger of an enrolled organisation can look at
rows only, and the marker says whether a buffered run could hold its key as well: with no marker,
none can, and the trigger writes its row (failing open, as the gate does); with one, it answers 503,
which the SDK retries. An enrolled organisation that is not bursting, or whose bursts carry no keys,
keeps its keyed triggers through a Redis outage.

- ``keyed_marker_generation``: a keyed trigger of an enrolled organisation reads the marker's
  generation *before* it looks for its key's holder among the rows, and the buffer takes the run
  only if its mirror of the marker has that very generation (mollifier/lua/lib/accept.lua). Else
  (NEEDS_MARKER) the trigger makes sure of the marker (``keyed_marker_make_sure``), looks for the
  holder again, and sends the accept again with the generation, which sets the mirror.
- ``keyed_buffer_may_hold`` is asked inside the transaction that writes the row of a keyed trigger
  that could not reach Redis (such a trigger is never buffered). It holds a lock that
  ``keyed_marker_make_sure`` waits for: a marker made while such a row is written is committed
  after it, so any trigger the buffer takes looked for its key's holder after that row was
  committed (it read the marker's generation, or made it, before looking), and finds it.
- ``keyed_markers_clear`` deletes the markers of environments with nothing left in the buffer
  (after the drain empties it: TaskRunSink.idle, and at each sweep), once they are
  TRIGGER_KEYED_MARKER_KEEP_SECONDS old.
"""

import logging
from datetime import timedelta

from django.db import DatabaseError, InterfaceError, connection, transaction
from django.utils import timezone

from mollifier import buffer
from mollifier.exceptions import BufferUnavailable
from runs import conf
from runs.models import KeyedBufferMarker, RuntimeEnvironment

logger = logging.getLogger(__name__)

_TABLE = KeyedBufferMarker._meta.db_table
_SEQUENCE = "runs_keyedbuffermarker_generation"  # created by migration 0008


class KeyedMarkerNeeded(Exception):
    """The buffer asks for the environment's keyed marker, and the caller is inside a transaction
    of its own (a batch's items), where a marker would not be committed before the accept: the
    caller makes sure of it outside (``refused``: the generation the buffer refused, if any), and
    sends the items again."""

    def __init__(self, environment: RuntimeEnvironment, *, refused: int | None):
        super().__init__(f"keyed marker needed for environment {environment.pk}")
        self.environment = environment
        self.refused = refused
        self.stored_before: set[int] | None = None  # the batch's items before the attempt (batches.py)


def _lock(cursor, environment_id: int, *, shared: bool) -> None:
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    cursor.execute(f"SELECT {function}(hashtextextended(%s, 0))", [f"mollifier-keyed:{environment_id}"])


def keyed_marker_generation(environment: RuntimeEnvironment) -> int | None:
    """The generation of the environment's marker, as committed now (None: no marker)."""
    return KeyedBufferMarker.objects.filter(environment=environment).values_list("generation", flat=True).first()


def keyed_marker_make_sure(environment: RuntimeEnvironment, *, refused: int | None = None) -> int:
    """Commit the environment's marker and return its generation: the one it has, or, when there is
    none or it is ``refused`` (the buffer has taken that generation away, and Postgres's marker of it
    is about to be deleted), a new one from the sequence, which is larger than any before."""
    with transaction.atomic(), connection.cursor() as cursor:
        _lock(cursor, environment.pk, shared=False)
        cursor.execute(
            f"INSERT INTO {_TABLE} (environment_id, generation, set_at) VALUES (%s, nextval(%s), now()) "
            f"ON CONFLICT (environment_id) DO UPDATE SET generation = CASE WHEN {_TABLE}.generation = %s "
            f"THEN EXCLUDED.generation ELSE {_TABLE}.generation END, set_at = EXCLUDED.set_at "
            "RETURNING generation",
            [environment.pk, _SEQUENCE, refused],
        )
        generation = int(cursor.fetchone()[0])
    logger.info("runs.keyed_marker.set env=%s generation=%d", environment.pk, generation)
    return generation


def keyed_buffer_may_hold(environment: RuntimeEnvironment) -> bool:
    """Inside the transaction that writes a keyed row without the buffer's word: may a buffered run
    hold keys of this environment? The lock is held until that transaction ends."""
    with connection.cursor() as cursor:
        _lock(cursor, environment.pk, shared=True)
    return KeyedBufferMarker.objects.filter(environment=environment).exists()


def keyed_markers_clear() -> int:
    """Delete the markers, made at least TRIGGER_KEYED_MARKER_KEEP_SECONDS ago, of environments
    with nothing waiting in the buffer; returns how many.
    A marker the buffer will not let go of (runs still wait, or a newer one was made meanwhile)
    stays. Redis or Postgres not answering leaves the markers for the next time."""
    cleared = 0
    try:
        kept_since = timezone.now() - timedelta(seconds=conf.keyed_marker_keep_seconds())
        markers = list(
            KeyedBufferMarker.objects.filter(set_at__lte=kept_since).values_list(
                "environment_id", "environment__organization_id", "generation"
            )
        )
        for env_id, org_id, generation in markers:
            if buffer.clear_keyed_marker(org_id=str(org_id), env_id=str(env_id), generation=generation):
                cleared += KeyedBufferMarker.objects.filter(environment_id=env_id, generation=generation).delete()[0]
    except (BufferUnavailable, DatabaseError, InterfaceError) as error:
        logger.warning("runs.keyed_marker.not_cleared error=%s", error)
    if cleared:
        logger.info("runs.keyed_marker.cleared markers=%d", cleared)
    return cleared
