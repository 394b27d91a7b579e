"""The Django admin: organisations (mollifier enrolment), task runs in both stores, the dashboard.

Admin code renders and dispatches; services do the work (flags, cancel, reset, drain).
"""

import functools
import json

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.core.paginator import InvalidPage
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from mollifier import buffer
from mollifier.clock import now_ms
from mollifier.exceptions import BufferUnavailable, SinkUnavailable
from runs.exceptions import RunError
from runs.models import BatchTaskRun, Organization, Project, RunStatus, RuntimeEnvironment, TaskRun
from runs.read_fallback import Where, buffered_runs_by_id
from runs.selectors import tags_in_use, task_identifiers_in_use, task_run_buffered_estimate
from runs.services.cancel import task_run_cancel
from runs.services.flags import MOLLIFIER_ENABLED, flag_enabled, mollifier_enrolled, organization_set_flag
from runs.services.idempotency import idempotency_key_reset
from runs.snapshots import from_ms

BUFFER_SILENT = "The buffer's Redis did not answer. Try again shortly."


class OrganizationForm(forms.ModelForm):
    mollifier_enabled = forms.BooleanField(
        required=False,
        label="Mollifier enabled",
        help_text="Divert this organisation's bursts into the buffer (feature_flags.mollifierEnabled). "
        "Takes effect on its next trigger.",
    )

    class Meta:
        model = Organization
        fields = ["slug", "title", "mollifier_enabled", "feature_flags"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["mollifier_enabled"].initial = mollifier_enrolled(self.instance)

    def clean(self):
        cleaned = super().clean() or {}
        flags = cleaned.get("feature_flags")
        flags = dict(flags) if isinstance(flags, dict) else {}
        flags[MOLLIFIER_ENABLED] = bool(cleaned.get("mollifier_enabled"))  # other flags are kept
        cleaned["feature_flags"] = flags
        return cleaned


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    form = OrganizationForm
    list_display = ["slug", "title", "mollifier", "buffered_runs", "created_at"]
    search_fields = ["slug", "title"]
    actions = ["enable_mollifier", "disable_mollifier"]

    @admin.display(boolean=True, description="mollifier")
    def mollifier(self, organization):
        return flag_enabled(organization=organization, name=MOLLIFIER_ENABLED)

    @admin.display(description="waiting in buffer")
    def buffered_runs(self, organization):
        try:
            return buffer.buffered_count(str(organization.pk))
        except BufferUnavailable:
            return "?"

    @admin.action(description="Enable the mollifier for the selected organisations", permissions=["change"])
    def enable_mollifier(self, request, queryset):
        self._set(request, queryset, True)

    @admin.action(description="Disable the mollifier for the selected organisations", permissions=["change"])
    def disable_mollifier(self, request, queryset):
        self._set(request, queryset, False)

    def _set(self, request, queryset, enabled: bool):
        for organization in queryset:
            organization_set_flag(organization=organization, name=MOLLIFIER_ENABLED, enabled=enabled)
        self.message_user(
            request, f"Mollifier {'enabled' if enabled else 'disabled'} for {queryset.count()} organisation(s)."
        )


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["slug", "organization", "external_ref"]
    list_select_related = ["organization"]


@admin.register(RuntimeEnvironment)
class RuntimeEnvironmentAdmin(admin.ModelAdmin):
    list_display = ["slug", "type", "project", "api_key_prefix"]
    list_select_related = ["project__organization"]
    readonly_fields = ["api_key_hash", "api_key_prefix"]


class VocabularyFilter(admin.SimpleListFilter):
    """A list filter from the merged read's vocabulary (runs/read_fallback.py FILTERS): it narrows
    both stores at once, so its ``queryset`` leaves the rows to RunChangeList."""

    vocabulary = ""

    def queryset(self, request, queryset):
        return queryset

    def vocabulary_value(self):
        return [self.value()]


class WhereFilter(VocabularyFilter):
    title = parameter_name = vocabulary = "where"

    def lookups(self, request, model_admin):
        return list(Where.LABELS.items())


class StatusFilter(VocabularyFilter):
    title, parameter_name, vocabulary = "status", "status", "status"

    def lookups(self, request, model_admin):
        return RunStatus.choices


class TaskFilter(VocabularyFilter):
    title, parameter_name, vocabulary = "task", "task", "task_identifier"

    def lookups(self, request, model_admin):
        return [(task, task) for task in task_identifiers_in_use()]


class EnvironmentFilter(VocabularyFilter):
    title, parameter_name, vocabulary = "environment", "environment", "environment"

    def lookups(self, request, model_admin):
        return [(str(env.pk), str(env)) for env in RuntimeEnvironment.objects.select_related("project__organization")]

    def vocabulary_value(self):
        value = self.value() or ""
        return [int(value)] if value.isdigit() else [-1]


class TagFilter(VocabularyFilter):
    title, parameter_name, vocabulary = "tag", "tag", "tag"

    def lookups(self, request, model_admin):
        return [(tag, tag) for tag in tags_in_use()]


class RunChangeList(ChangeList):
    """Task runs from both stores in one list, newest first, paged with the admin's ``?p=``: the
    merged read does the filtering, the search, the counting and the paging."""

    def get_results(self, request):
        filters = {
            spec.vocabulary: spec.vocabulary_value()
            for spec in self.filter_specs
            if isinstance(spec, VocabularyFilter) and spec.value()
        }
        if self.query.strip():
            filters["search"] = self.query.strip()
        self.merged = TaskRun.objects.all().with_buffered().filter(**filters)
        self.counts = self.merged.counts()
        counted = _Counted(self.merged, self.counts.total)  # slicing and count() are what a paginator uses
        paginator = self.model_admin.get_paginator(request, counted, self.list_per_page)  # type: ignore[arg-type]
        self.result_count = self.full_result_count = self.counts.total
        self.show_full_result_count = False
        self.show_admin_actions = True
        self.can_show_all = self.result_count <= self.list_max_show_all
        self.multi_page = self.result_count > self.list_per_page
        if (self.show_all and self.can_show_all) or not self.multi_page:
            self.result_list = self.merged[0 : self.result_count]
        else:
            try:
                self.result_list = paginator.page(self.page_num).object_list
            except InvalidPage:
                raise IncorrectLookupParameters from None
        self.paginator = paginator

    def url_for_result(self, result):
        if result.is_buffered:
            return reverse("admin:runs_taskrun_buffered", args=[result.organization_id, result.friendly_id])
        return super().url_for_result(result)


class _Counted:
    """The merged runs with their count worked out once (the paginator asks for it again)."""

    def __init__(self, merged, total: int):
        self.merged, self.total = merged, total

    def count(self) -> int:
        return self.total

    def __getitem__(self, window):
        return self.merged[window]


ACROSS_LIMIT = 10_000  # "select all" acts on at most this many runs at once


@admin.register(TaskRun)
class TaskRunAdmin(admin.ModelAdmin):
    list_display = [
        "friendly_id",
        "task_identifier",
        "status_now",
        "where",
        "environment",
        "created_at",
        "idempotency_key",
    ]
    list_filter = [WhereFilter, StatusFilter, TaskFilter, EnvironmentFilter, TagFilter]
    search_fields = ["id"]  # searched by the merged read: a run id, an idempotency key or a tag
    search_help_text = "A run id, an idempotency key or a tag."
    list_per_page = 100
    show_facets = admin.ShowFacets.NEVER  # facet counts come from querysets; this list is merged
    ordering = ["-created_at", "-id"]
    actions = ["cancel_runs", "reset_idempotency_keys"]
    change_list_template = "admin/runs/taskrun/change_list.html"

    def get_changelist(self, request, **kwargs):
        return RunChangeList

    def get_search_results(self, request, queryset, search_term):
        return queryset, False  # the merged read searches both stores (RunChangeList)

    def has_add_permission(self, request):
        return False  # runs come from triggers

    def has_delete_permission(self, request, obj=None):
        return False

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in TaskRun._meta.fields]

    @admin.display(description="status")
    def status_now(self, run):
        return run.status_at(timezone.now())

    @admin.display(description="where")
    def where(self, run):
        return Where.LABELS[Where.of(run)]

    def _buffer_answers(self, view):
        """A page or action that reads the buffer: when its Redis does not answer (refused, hung,
        or the breaker open), back to the run list with that said, as the list itself says it,
        instead of a 500. (An action's own changes count the runs Redis failed for as not done.)"""

        @functools.wraps(view)
        def answered(request, *args, **kwargs):
            try:
                return view(request, *args, **kwargs)
            except BufferUnavailable:
                messages.error(request, BUFFER_SILENT)
                return HttpResponseRedirect(reverse("admin:runs_taskrun_changelist"))

        return answered

    def _selected_runs(self, request, queryset) -> list[TaskRun]:
        """The selected runs of either store: rows from the action's queryset, buffered runs by id."""
        rows = list(queryset.select_related("environment"))
        if request.POST.get("select_across") == "1":
            changelist = self.get_changelist_instance(request)
            assert isinstance(changelist, RunChangeList)
            return list(changelist.merged[0:ACROSS_LIMIT])
        wanted = set(request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)) - {run.pk for run in rows}
        return rows + buffered_runs_by_id(wanted)

    def response_action(self, request, *args, **kwargs):
        # The actions read the selected buffered runs first (_selected_runs).
        return self._buffer_answers(super().response_action)(request, *args, **kwargs)

    @admin.action(description="Cancel the selected runs", permissions=["change"])
    def cancel_runs(self, request, queryset):
        cancelled = finished = failed = 0
        for run in self._selected_runs(request, queryset):
            try:
                after = task_run_cancel(run=run, reason="Canceled in the admin")
            except (RunError, BufferUnavailable, SinkUnavailable):
                failed += 1  # still being written, or Postgres cannot settle it: 503 on the API; retried
                continue
            if run.status != RunStatus.CANCELED and after.status == RunStatus.CANCELED:
                cancelled += 1
            else:
                finished += 1  # cancelled or finished before: left as it was
        self.message_user(
            request,
            f"Cancelled {cancelled} run(s)"
            + (f"; {finished} had already finished or been cancelled, left as they were" if finished else "")
            + (f"; {failed} could not be cancelled right now, retry." if failed else "."),
        )

    @admin.action(description="Reset the idempotency keys of the selected runs", permissions=["change"])
    def reset_idempotency_keys(self, request, queryset):
        done = 0
        for run in self._selected_runs(request, queryset):
            if not run.idempotency_key:
                continue
            try:
                idempotency_key_reset(
                    environment=run.environment, task_identifier=run.task_identifier, key=run.idempotency_key
                )
                done += 1
            except (RunError, BufferUnavailable, SinkUnavailable):
                continue
        self.message_user(request, f"Released {done} idempotency key(s).")

    # -- buffered runs (Redis) ----------------------------------------------------------------

    def get_urls(self):
        def view(page):
            return self.admin_site.admin_view(self._buffer_answers(page))

        return [
            path("buffered/<str:org_id>/<str:run_id>/", view(self.buffered_view), name="runs_taskrun_buffered"),
            path(
                "buffered/<str:org_id>/<str:run_id>/cancel/",
                view(require_POST(self.buffered_cancel)),
                name="runs_taskrun_buffered_cancel",
            ),
            path(
                "buffered/<str:org_id>/<str:run_id>/reset-key/",
                view(require_POST(self.buffered_reset)),
                name="runs_taskrun_buffered_reset",
            ),
            *super().get_urls(),
        ]

    def _buffered(self, org_id: str, run_id: str):
        entry = buffer.get(org_id=org_id, run_id=run_id)
        if entry is None:
            raise Http404("Not in the buffer (written to Postgres, or unknown)")
        environment = (
            RuntimeEnvironment.objects.select_related("organization", "project").filter(pk=int(entry.env_id)).first()
        )
        if environment is None:
            raise Http404("The run's environment no longer exists")
        return entry, environment, TaskRun.objects.get_with_fallback(environment=environment, run_id=run_id)

    def buffered_view(self, request, org_id: str, run_id: str):
        if not self.has_view_permission(request):
            raise PermissionDenied
        entry, environment, run = self._buffered(org_id, run_id)
        if not run.is_buffered:  # written meanwhile: show the row
            return HttpResponseRedirect(reverse("admin:runs_taskrun_change", args=[run.pk]))
        leased = run_id in buffer.leased_ids(org_id=org_id, env_id=entry.env_id)
        estimate = task_run_buffered_estimate(run=run)
        context = {
            **self.admin_site.each_context(request),
            "title": f"{run_id} (waiting in the buffer)",
            "opts": self.model._meta,
            "run": run,
            "entry": entry,
            "environment": environment,
            "where": "draining" if leased else "buffered",
            "dwell_seconds": max(0, now_ms() - entry.accepted_at_ms) / 1000,
            "estimate": estimate,
            "estimated_write_at": from_ms(estimate.write_at_ms) if estimate and estimate.write_at_ms else None,
            "estimated_in_seconds": max(0, estimate.write_at_ms - now_ms()) / 1000
            if estimate and estimate.write_at_ms
            else None,
            "snapshot": json.dumps(entry.snapshot, indent=2, ensure_ascii=False)
            if entry.snapshot
            else entry.raw_snapshot,
            "can_change": self.has_change_permission(request),
        }
        return TemplateResponse(request, "admin/runs/taskrun/buffered.html", context)

    def buffered_cancel(self, request, org_id: str, run_id: str):
        if not self.has_change_permission(request):
            raise PermissionDenied
        _, _, run = self._buffered(org_id, run_id)
        self._act(request, lambda: task_run_cancel(run=run, reason="Canceled in the admin"), f"Cancelled {run_id}.")
        return HttpResponseRedirect(reverse("admin:runs_taskrun_buffered", args=[org_id, run_id]))

    def buffered_reset(self, request, org_id: str, run_id: str):
        if not self.has_change_permission(request):
            raise PermissionDenied
        entry, environment, run = self._buffered(org_id, run_id)
        if not entry.idempotency_key:
            messages.warning(request, f"{run_id} has no idempotency key.")
        else:
            self._act(
                request,
                lambda: idempotency_key_reset(
                    environment=environment, task_identifier=run.task_identifier, key=entry.idempotency_key
                ),
                f"Released the idempotency key of {run_id}.",
            )
        return HttpResponseRedirect(reverse("admin:runs_taskrun_buffered", args=[org_id, run_id]))

    def _act(self, request, action, done: str):
        try:
            action()
            messages.success(request, done)
        except RunError as error:
            messages.error(request, error.message)
        except SinkUnavailable:  # pinned by a drainer, and Postgres cannot say whether it committed
            messages.error(request, "Postgres did not answer about the drain writing this run. Try again shortly.")


@admin.register(BatchTaskRun)
class BatchTaskRunAdmin(admin.ModelAdmin):
    list_display = ["friendly_id", "status", "run_count", "sealed", "environment", "created_at"]
    list_select_related = ["environment__project__organization"]
