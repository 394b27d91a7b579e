from django.core.management.base import BaseCommand

from runs.services.environments import ENV_TYPES, environment_create, environment_rotate_key


class Command(BaseCommand):
    help = (
        "Create an organisation, project and environment (whatever is missing) and print the "
        "environment's new secret key as the last line. An existing environment keeps its key "
        "unless --rotate is given."
    )

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="organisation slug")
        parser.add_argument("--project", required=True, help="project slug")
        parser.add_argument("--env", required=True, choices=sorted(ENV_TYPES), help="environment")
        parser.add_argument("--rotate", action="store_true", help="give an existing environment a new key")

    def handle(self, *args, org, project, env, rotate, **options):
        environment, key = environment_create(org_slug=org, project_slug=project, env=env)
        if key is None and not rotate:
            self.stderr.write(
                f"Environment {environment} already exists (key {environment.api_key_prefix}…); "
                "its key is shown only once. Use --rotate for a new one."
            )
            raise SystemExit(1)
        if key is None:
            key = environment_rotate_key(environment=environment)
        self.stdout.write(f"Environment {environment} (project ref {environment.project.external_ref})")
        self.stdout.write(key)
