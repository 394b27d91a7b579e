from django.apps import AppConfig


class MollifierConfig(AppConfig):
    name = "mollifier"
    verbose_name = "Mollifier buffer"
