from django.apps import AppConfig


class MollifierConfig(AppConfig):
    name = "mollifier"
    verbose_name = "Mollifier buffer"

    def ready(self) -> None:
        # Importing the module registers the Redis eviction check.
        from mollifier import checks  # noqa: F401
