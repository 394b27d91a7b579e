"""TaskRun's manager: Postgres first, then the mollifier buffer (DESIGN §8)."""

from django.db import models
from django.db.models import Q

from runs import ids
from trigger_project.postgres import breaker as postgres_breaker


class TaskRunQuerySet(models.QuerySet):
    def for_environment(self, environment) -> "TaskRunQuerySet":
        return self.filter(environment=environment)

    def with_status(self, statuses, *, now) -> "TaskRunQuerySet":
        """Runs whose status, as a reader sees it at ``now`` (TaskRun.status_at), is one of these."""
        return self.filter(status_q(statuses, now=now))

    def with_buffered(self, *, environments=None, must_read_buffer: bool = False):
        """This queryset's rows and the runs still in the mollifier buffer, as one ordered,
        lazily read result (runs.read_fallback.MergedRuns), for ``environments`` (None: every
        environment with buffered runs). Filter it with its own vocabulary: ``.filter(status=[…])``.
        ``must_read_buffer``: a page that cannot read the buffer raises BufferUnavailable instead of
        giving the rows alone."""
        from runs.read_fallback import MergedRuns  # it builds TaskRuns: importing it here would be circular

        return MergedRuns(self, environments=environments, must_read_buffer=must_read_buffer)


def status_q(statuses, *, now) -> Q:
    """TaskRun.status_at as a query: a stored DELAYED counts as QUEUED once its delay has passed."""
    wanted = set(statuses)
    query = Q(status__in=wanted - {"QUEUED", "DELAYED"})
    if "QUEUED" in wanted:
        query |= Q(status="QUEUED") | Q(status="DELAYED", delay_until__lte=now)
    if "DELAYED" in wanted:
        query |= Q(status="DELAYED", delay_until__gt=now) | Q(status="DELAYED", delay_until__isnull=True)
    return query


class TaskRunManager(models.Manager.from_queryset(TaskRunQuerySet)):  # type: ignore[misc]
    def get_with_fallback(self, *, environment, run_id: str):
        """The run ``run_id`` (``run_…``) of ``environment``, wherever it lives right now.

        Postgres → buffer → Postgres again: a run acked between the first two reads is in
        Postgres by then. A buffered run comes back as an unsaved TaskRun built from its snapshot
        (``run.is_buffered``). Raises DoesNotExist (also for another environment's run) and a
        redis error when the buffer cannot be read after a Postgres miss.
        """
        from mollifier import buffer
        from runs.snapshots import entry_to_run  # runs.snapshots imports the models

        internal = ids.from_friendly(ids.RUN, run_id)
        if internal is None:
            raise self.model.DoesNotExist(run_id)

        def buffered():
            entry = buffer.get(org_id=str(environment.organization_id), run_id=ids.to_friendly(ids.RUN, internal))
            if entry is not None and not entry.materialised and entry.env_id == str(environment.pk):
                return entry_to_run(entry, environment=environment)
            return None

        # While Postgres is known not to answer, a run still waiting in the buffer is read there; any
        # other read answers 503 at once (the breaker refuses the query).
        if postgres_breaker.is_open() and (run := buffered()) is not None:
            return run
        rows = self.for_environment(environment).filter(id=internal).select_related("environment")
        if (run := rows.first()) is not None:
            return run
        if (run := buffered()) is not None:
            return run
        return rows.get()  # the drain race: materialised meanwhile, or DoesNotExist
