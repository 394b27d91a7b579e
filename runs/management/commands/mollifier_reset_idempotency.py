from django.core.management.base import BaseCommand, CommandError
from django.template.defaultfilters import pluralize

from runs.exceptions import IdempotencyKeyNotFound
from runs.models import RuntimeEnvironment
from runs.services.idempotency import idempotency_key_reset


class Command(BaseCommand):
    help = (
        "Release an idempotency key in Postgres and in the mollifier buffer, so the next trigger with "
        "it makes a new run. Exit code 1 when no run held the key."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--env", required=True, help="ORG/PROJECT/ENV slugs (e.g. acme/web/prod) or the environment id"
        )
        parser.add_argument("--task", required=True, help="task identifier")
        parser.add_argument(
            "--key", required=True, help="the key as the SDK sent it (a 64-character hash for SDK keys)"
        )

    def handle(self, *args, env, task, key, **options):
        environment = _environment(env)
        try:
            outcome = idempotency_key_reset(environment=environment, task_identifier=task, key=key)
        except IdempotencyKeyNotFound as error:
            raise CommandError(error.message) from None
        if outcome.rows:
            self.stdout.write(f"released from {outcome.rows} run{pluralize(outcome.rows)} in Postgres")
        if outcome.buffered_run:
            self.stdout.write(f"released from buffered run {outcome.buffered_run}")
        self.stdout.write(f"key {key!r} of task {task!r} in {environment} is free")


def _environment(spec: str) -> RuntimeEnvironment:
    queryset = RuntimeEnvironment.objects.select_related("organization", "project")
    if spec.isdigit():
        environment = queryset.filter(pk=int(spec)).first()
    else:
        parts = spec.split("/")
        if len(parts) != 3:
            raise CommandError("--env must be ORG/PROJECT/ENV or an environment id")
        environment = queryset.filter(organization__slug=parts[0], project__slug=parts[1], slug=parts[2]).first()
    if environment is None:
        raise CommandError(f"no environment {spec!r}")
    return environment
