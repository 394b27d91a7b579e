from django.contrib import admin

from runs.models import BatchTaskRun, Organization, Project, RuntimeEnvironment, TaskRun


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["slug", "title", "created_at"]
    search_fields = ["slug", "title"]


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["slug", "organization", "external_ref"]
    list_select_related = ["organization"]


@admin.register(RuntimeEnvironment)
class RuntimeEnvironmentAdmin(admin.ModelAdmin):
    list_display = ["slug", "type", "project", "api_key_prefix"]
    list_select_related = ["project__organization"]
    readonly_fields = ["api_key_hash", "api_key_prefix"]


@admin.register(TaskRun)
class TaskRunAdmin(admin.ModelAdmin):
    list_display = ["friendly_id", "task_identifier", "status", "environment", "created_at"]
    list_filter = ["status"]
    list_select_related = ["environment__project__organization"]
    search_fields = ["id", "idempotency_key", "task_identifier"]
    show_full_result_count = False
    ordering = ["-created_at"]


@admin.register(BatchTaskRun)
class BatchTaskRunAdmin(admin.ModelAdmin):
    list_display = ["friendly_id", "status", "run_count", "sealed", "created_at"]
