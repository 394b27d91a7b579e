from django.core.management.base import BaseCommand, CommandError

from runs.services.environments import ENV_TYPES, environment_create, environment_rotate_key
from runs.services.flags import MOLLIFIER_ENABLED, mollifier_enrolled, organization_set_flag


class Command(BaseCommand):
    help = (
        "Create an organisation, project and environment (whatever is missing) and print the "
        "environment's new secret key as the last line. A key is shown only when it is made: for an "
        "existing environment the command fails (exit 1, the reason on stderr, and a last line that "
        "says there is no key) unless --rotate gives it a new key. A new organisation is not enrolled "
        "in the mollifier (its triggers go straight to Postgres) unless --enroll is given."
    )

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="organisation slug")
        parser.add_argument("--project", required=True, help="project slug")
        parser.add_argument("--env", required=True, choices=sorted(ENV_TYPES), help="environment")
        parser.add_argument(
            "--rotate", action="store_true", help="give an existing environment a new key (the old one stops working)"
        )
        parser.add_argument("--enroll", action="store_true", help="enrol the organisation in the mollifier")

    def handle(self, *args, org, project, env, rotate, enroll, **options):
        environment, key = environment_create(org_slug=org, project_slug=project, env=env)
        ref = environment.project.external_ref
        if key is not None:
            self.stdout.write(f"Environment {environment} created (project ref {ref})")
        elif rotate:
            key = environment_rotate_key(environment=environment)
            self.stdout.write(f"Environment {environment}: new key (project ref {ref}); the old one no longer works")
        else:
            self.stdout.write(f"Environment {environment} already exists (project ref {ref})")
        organization = environment.organization
        if enroll and not mollifier_enrolled(organization):
            organization_set_flag(organization=organization, name=MOLLIFIER_ENABLED, enabled=True)
        if mollifier_enrolled(organization):
            self.stdout.write(f"Organisation {organization.slug}: enrolled in the mollifier")
        else:
            self.stdout.write(
                f"Organisation {organization.slug}: not enrolled in the mollifier (its triggers go straight to "
                "Postgres); enrol it with --enroll or in the admin"
            )
        if key is None:
            # A last line that cannot pass for a key: `KEY=$(… | tail -1)` gets this, not nothing.
            self.stdout.write(f"no key: {environment} already exists (--rotate makes a new one)")
            raise CommandError(
                f"Environment {environment} already exists and its key ({environment.api_key_prefix}…) is shown "
                "only when it is made. Run again with --rotate for a new key; the current one then stops working."
            )
        self.stdout.write(key)
