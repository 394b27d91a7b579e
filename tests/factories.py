import factory

from runs import ids
from runs.models import Organization, Project, RuntimeEnvironment, TaskRun


class OrganizationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organization

    slug = factory.Sequence(lambda n: f"org-{n}")
    title = factory.LazyAttribute(lambda o: o.slug.title())


class ProjectFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Project

    organization = factory.SubFactory(OrganizationFactory)
    slug = factory.Sequence(lambda n: f"project-{n}")
    name = factory.LazyAttribute(lambda o: o.slug)
    external_ref = factory.Sequence(lambda n: f"proj_{n:020d}")


class EnvironmentFactory(factory.django.DjangoModelFactory):
    """An environment whose clear secret key is left on the instance as ``secret_key``."""

    class Meta:
        model = RuntimeEnvironment
        skip_postgeneration_save = True

    project = factory.SubFactory(ProjectFactory)
    organization = factory.LazyAttribute(lambda o: o.project.organization)
    type = RuntimeEnvironment.Type.DEVELOPMENT
    slug = "dev"
    api_key_hash = ""
    api_key_prefix = ""

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        environment = model_class(*args, **kwargs)
        environment.secret_key = environment.rotate_api_key()
        environment.save()
        return environment


class TaskRunFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TaskRun

    id = factory.LazyFunction(ids.new_internal_id)
    environment = factory.SubFactory(EnvironmentFactory)
    organization_id = factory.LazyAttribute(lambda o: o.environment.organization_id)
    project_id = factory.LazyAttribute(lambda o: o.environment.project_id)
    task_identifier = "hello-world"
    payload = '{"json":{"n":1}}'
    payload_type = "application/super+json"
