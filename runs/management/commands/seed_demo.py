from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from runs.models import RuntimeEnvironment
from runs.services.environments import environment_create, environment_rotate_key
from runs.services.flags import MOLLIFIER_ENABLED, organization_set_flag


class Command(BaseCommand):
    help = (
        "Create the demo organisation/project/environment (demo/demo/dev) if missing, enrolled in the "
        "mollifier, and print its secret key. The key is kept in .dev/demo-key for local use only; "
        "when that file does not match the database, the demo key is rotated."
    )

    def handle(self, *args, **options):
        key_file = Path(settings.BASE_DIR) / ".dev" / "demo-key"
        environment, key = environment_create(org_slug="demo", project_slug="demo", env="dev")
        if key is not None:  # first seed: enrol the demo organisation (the admin may turn it off later)
            organization_set_flag(organization=environment.organization, name=MOLLIFIER_ENABLED, enabled=True)
        if key is None:
            saved = key_file.read_text().strip() if key_file.exists() else ""
            if saved and RuntimeEnvironment.hash_api_key(saved) == environment.api_key_hash:
                key = saved
            else:
                key = environment_rotate_key(environment=environment)
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)
        self.stdout.write(f"demo environment: {environment} (project ref {environment.project.external_ref})")
        self.stdout.write(f"demo secret key:  {key}")
