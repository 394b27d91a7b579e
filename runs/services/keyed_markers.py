"""Keyed markers: Postgres's record that runs with an idempotency key may wait in an environment's
buffer (runs.models.KeyedBufferMarker).

While Redis answers, the pre-gate claim and the buffer's own lookup keep an idempotency key to one
run across both stores. While it does not, a keyed trigger of an enrolled organisation can look at
rows only, and the marker says whether a buffered run could hold its key as well: with no marker,
none can, and the trigger writes its row (failing open, as the gate does); with one, it answers 503,
which the SDK retries. An enrolled organisation that is not bursting, or whose bursts carry no keys,
keeps its keyed triggers through a Redis outage.

- ``keyed_marker_make_sure`` runs before the buffer takes a keyed run of an environment whose marker
  it does not know of (the accept answers NEEDS_MARKER); the accept is then sent again with the
  marker's generation, which sets the buffer's mirror of it (mollifier/lua/lib/accept.lua).
- ``keyed_buffer_may_hold`` is asked inside the transaction that writes the row of a keyed trigger
  that could not reach Redis. It holds a lock that ``keyed_marker_make_sure`` waits for, so a marker
  made while such a row is being written is committed after it, and the trigger that made it, which
  looks for the key's holder again afterwards, finds that row.
- ``keyed_markers_clear`` deletes the markers of environments with nothing left in the buffer
  (after the drain empties it: TaskRunSink.idle).
"""

import logging

from django.db import DatabaseError, InterfaceError, connection, transaction

from mollifier import buffer
from mollifier.exceptions import BufferUnavailable
from runs.models import KeyedBufferMarker, RuntimeEnvironment

logger = logging.getLogger(__name__)

_TABLE = KeyedBufferMarker._meta.db_table
_SEQUENCE = "runs_keyedbuffermarker_generation"  # created by migration 0008


class KeyedMarkerNeeded(Exception):
    """The buffer asks for the environment's keyed marker, and the caller is inside a transaction
    of its own (a batch's items), where a marker would not be committed before the accept: the
    caller makes sure of it outside, and comes back with its generation."""

    def __init__(self, environment: RuntimeEnvironment):
        super().__init__(f"keyed marker needed for environment {environment.pk}")
        self.environment = environment


def _lock(cursor, environment_id: int, *, shared: bool) -> None:
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    cursor.execute(f"SELECT {function}(hashtextextended(%s, 0))", [f"mollifier-keyed:{environment_id}"])


def keyed_marker_make_sure(environment: RuntimeEnvironment) -> int:
    """Commit the environment's marker (a new generation each time, so that one a clearer has taken
    away is never handed to the buffer again) and return its generation."""
    with transaction.atomic(), connection.cursor() as cursor:
        _lock(cursor, environment.pk, shared=False)
        cursor.execute(
            f"INSERT INTO {_TABLE} (environment_id, generation, set_at) VALUES (%s, nextval(%s), now()) "
            f"ON CONFLICT (environment_id) DO UPDATE SET generation = GREATEST({_TABLE}.generation, "
            "EXCLUDED.generation), set_at = EXCLUDED.set_at RETURNING generation",
            [environment.pk, _SEQUENCE],
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
    """Delete the markers of environments with nothing waiting in the buffer; returns how many.
    A marker the buffer will not let go of (runs still wait, or a newer one was made meanwhile)
    stays. Redis or Postgres not answering leaves the markers for the next time."""
    cleared = 0
    try:
        markers = list(
            KeyedBufferMarker.objects.values_list("environment_id", "environment__organization_id", "generation")
        )
        for env_id, org_id, generation in markers:
            if buffer.clear_keyed_marker(org_id=str(org_id), env_id=str(env_id), generation=generation):
                cleared += KeyedBufferMarker.objects.filter(environment_id=env_id, generation=generation).delete()[0]
    except (BufferUnavailable, DatabaseError, InterfaceError) as error:
        logger.warning("runs.keyed_marker.not_cleared error=%s", error)
    if cleared:
        logger.info("runs.keyed_marker.cleared markers=%d", cleared)
    return cleared
