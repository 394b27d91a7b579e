"""The mollifier keeps its data in Redis; the admin needs a model to hang its dashboard on."""

from django.db import models


class Dashboard(models.Model):
    """No table: the admin's entry to the buffer dashboard (a Redis-backed page, mollifier/admin.py)."""

    class Meta:
        managed = False
        verbose_name = verbose_name_plural = "dashboard"
        default_permissions = ("view",)
        permissions = [("drain_buffer", "Can drain an environment of the buffer now")]

    def __str__(self) -> str:
        return "Mollifier dashboard"
