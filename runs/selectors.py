"""Reading runs: one by id, and the merged listing (Postgres and the buffer, runs/read_fallback.py)."""

import logging
from typing import Any

from mollifier.clock import now_ms
from mollifier.estimate import Estimate, estimate
from mollifier.exceptions import BufferUnavailable
from runs.exceptions import RunNotFound
from runs.models import Organization, Project, RuntimeEnvironment, TaskRun
from runs.read_fallback import MergedRuns
from runs.services.flags import mollifier_enrolled
from runs.snapshots import to_ms

logger = logging.getLogger(__name__)


def task_run_get(*, environment: RuntimeEnvironment, run_id: str) -> TaskRun:
    """The run with friendly id ``run_id`` in ``environment``, in Postgres or still in the buffer;
    RunNotFound otherwise (also for another tenant's run)."""
    try:
        return TaskRun.objects.get_with_fallback(environment=environment, run_id=run_id)
    except TaskRun.DoesNotExist:
        raise RunNotFound("Run not found") from None


def task_run_buffered_estimate(*, run: TaskRun) -> Estimate | None:
    """When a run still in the buffer should be written (its queue position, the drain rate);
    None for a run in Postgres (no Redis call at all), and None when Redis does not answer: the
    estimate never fails a read."""
    if not run.is_buffered:
        return None
    try:
        return estimate(
            org_id=str(run.organization_id),
            env_id=str(run.environment_id),
            run_id=run.friendly_id,
            delay_until_ms=to_ms(run.delay_until) if run.delay_until else None,
            now_ms=now_ms(),
        )
    except BufferUnavailable as error:
        logger.warning("mollifier.estimate.unavailable run=%s error=%s", run.friendly_id, error)
        return None


def task_run_list(*, environment: RuntimeEnvironment, filters: dict[str, Any]) -> MergedRuns:
    """The environment's runs in both stores, newest first, narrowed by ``filters`` (the merged
    read's vocabulary); lazy: pages are read by the caller (runs/api/pagination.py). For an
    enrolled organisation a page that cannot read the buffer raises BufferUnavailable (503, and the
    SDK retries): rows alone would leave out its buffered runs without a word. Others get the rows."""
    # Enrolment, not the master switch: switched off during a backlog, the buffer still holds runs.
    enrolled = mollifier_enrolled(environment.organization)
    return TaskRun.objects.with_buffered(environments=[environment], must_read_buffer=enrolled).filter(**filters)


def environment_in_project(*, environment: RuntimeEnvironment, project_ref: str) -> bool:
    """Does ``project_ref`` (``proj_…``) name the environment's own project?"""
    return Project.objects.filter(pk=environment.project_id, external_ref=project_ref).exists()


def environment_matches(*, environment: RuntimeEnvironment, names: list[str]) -> bool:
    """Does ``filter[env]`` (slugs or types, any case; empty: any) name this environment?"""
    wanted = {name.lower() for name in names}
    prefix = environment.KEY_PREFIXES[RuntimeEnvironment.Type(environment.type)]
    known = {environment.slug.lower(), environment.type.lower(), prefix}
    return not wanted or bool(wanted & known)


def task_identifiers_in_use(*, limit: int = 50) -> list[str]:
    """Task identifiers of the newest runs in Postgres (the admin's task filter)."""
    return sorted(set(TaskRun.objects.order_by("-created_at").values_list("task_identifier", flat=True)[:1000]))[:limit]


def tags_in_use(*, limit: int = 30) -> list[str]:
    """Tags of the newest runs in Postgres (the admin's tag filter)."""
    tags = TaskRun.objects.order_by("-created_at").values_list("tags", flat=True)[:1000]
    return sorted({tag for run_tags in tags for tag in run_tags})[:limit]


class BufferDirectory:
    """Tenants as the mollifier's dashboard needs them (``MOLLIFIER["DIRECTORY"]``)."""

    def environment_labels(self, env_ids) -> dict[str, str]:
        environments = RuntimeEnvironment.objects.select_related("project__organization").by_ids(env_ids)
        return {env_id: str(environment) for env_id, environment in environments.items()}

    def environment_types(self, env_ids) -> dict[str, str]:
        environments = RuntimeEnvironment.objects.by_ids(env_ids)
        return {env_id: environment.type.lower() for env_id, environment in environments.items()}

    def enrolled_organizations(self) -> list[str]:
        return [
            str(pk)
            for pk in Organization.objects.filter(feature_flags__mollifierEnabled=True).values_list("pk", flat=True)
        ]
