"""Creating organisations, projects and environments, and their secret keys."""

import secrets

from django.db import transaction

from runs.models import Organization, Project, RuntimeEnvironment

ENV_TYPES = {
    "dev": RuntimeEnvironment.Type.DEVELOPMENT,
    "staging": RuntimeEnvironment.Type.STAGING,
    "prod": RuntimeEnvironment.Type.PRODUCTION,
    "preview": RuntimeEnvironment.Type.PREVIEW,
}


@transaction.atomic
def environment_create(*, org_slug: str, project_slug: str, env: str) -> tuple[RuntimeEnvironment, str | None]:
    """Create whatever of org/project/environment is missing.

    Returns the environment and its new secret key in clear, or None for the key when the
    environment already existed (its key cannot be shown again; rotate it instead).
    """
    organization, _ = Organization.objects.get_or_create(slug=org_slug, defaults={"title": org_slug})
    project, _ = Project.objects.get_or_create(
        organization=organization,
        slug=project_slug,
        defaults={"name": project_slug, "external_ref": f"proj_{secrets.token_hex(10)}"},
    )
    environment = RuntimeEnvironment.objects.filter(project=project, slug=env).first()
    if environment is not None:
        return environment, None
    environment = RuntimeEnvironment(organization=organization, project=project, type=ENV_TYPES[env], slug=env)
    key = environment.rotate_api_key()
    environment.save()
    return environment, key


def environment_rotate_key(*, environment: RuntimeEnvironment) -> str:
    key = environment.rotate_api_key()
    environment.save(update_fields=["api_key_hash", "api_key_prefix"])
    return key
