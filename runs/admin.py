"""The Django admin: organisations (mollifier enrolment), task runs in both stores, the dashboard.

Admin code renders and dispatches; services do the work (flags, cancel, reset, drain).
"""

import json

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from mollifier import buffer, conf
from mollifier.drainer import Drainer, now_ms
from mollifier.exceptions import BufferUnavailable
from mollifier.stats import env_stats, redis_status, shadow_orgs, timeline
from runs import charts
from runs.exceptions import IdempotencyKeyNotFound, RunError
from runs.models import BatchTaskRun, MollifierDashboard, Organization, Project, RuntimeEnvironment, TaskRun
from runs.selectors import buffered_runs
from runs.services.cancel import task_run_cancel
from runs.services.flags import MOLLIFIER_ENABLED, flag_enabled, mollifier_enrolled, organization_set_flag
from runs.services.idempotency import idempotency_key_reset


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
        cleaned = super().clean()
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


class WhereFilter(admin.SimpleListFilter):
    title = "where"
    parameter_name = "where"

    def lookups(self, request, model_admin):
        return [
            ("buffered", "waiting in the buffer"),
            ("draining", "being written by a drainer"),
            ("materialised", "written from the buffer"),
            ("direct", "written directly"),
        ]

    def queryset(self, request, queryset):
        value = self.value()
        if value in ("buffered", "draining"):
            return queryset.none()  # those live in Redis: shown in the table above the rows
        if value == "materialised":
            return queryset.filter(materialised_at__isnull=False)
        if value == "direct":
            return queryset.filter(buffered_at__isnull=True)
        return queryset


@admin.register(TaskRun)
class TaskRunAdmin(admin.ModelAdmin):
    list_display = ["friendly_id", "task_identifier", "status", "where", "environment", "created_at", "idempotency_key"]
    list_filter = [WhereFilter, "status"]
    list_select_related = ["environment__project__organization"]
    search_fields = ["id", "idempotency_key"]
    search_help_text = "A run id, an idempotency key or a tag."
    show_full_result_count = False
    ordering = ["-created_at", "-id"]
    actions = ["cancel_runs", "reset_idempotency_keys"]
    change_list_template = "admin/runs/taskrun/change_list.html"

    def has_add_permission(self, request):
        return False  # runs come from triggers

    def has_delete_permission(self, request, obj=None):
        return False

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in TaskRun._meta.fields]

    @admin.display(description="where")
    def where(self, run):
        return "materialised" if run.materialised_at else "direct"

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip().removeprefix("run_")
        results, duplicates = super().get_search_results(request, queryset, term)
        if term:
            results |= queryset.filter(tags__contains=[search_term.strip()])
        return results, duplicates

    def changelist_view(self, request, extra_context=None):
        where = request.GET.get("where")
        rows, error = [], None
        if where not in ("materialised", "direct"):
            try:
                rows = buffered_runs(
                    search=request.GET.get("q", ""), where=where if where in ("buffered", "draining") else None
                )
            except BufferUnavailable:
                error = "The buffer's Redis did not answer: only runs in Postgres are shown."
        context = {"buffered_rows": rows, "buffer_error": error, "now": timezone.now(), **(extra_context or {})}
        return super().changelist_view(request, extra_context=context)

    @admin.action(description="Cancel the selected runs", permissions=["change"])
    def cancel_runs(self, request, queryset):
        for run in queryset:
            task_run_cancel(run=run, reason="Canceled in the admin")
        self.message_user(request, f"Cancelled {queryset.count()} run(s) (finished runs are left as they were).")

    @admin.action(description="Reset the idempotency keys of the selected runs", permissions=["change"])
    def reset_idempotency_keys(self, request, queryset):
        done = 0
        for run in queryset.exclude(idempotency_key=None).select_related("environment"):
            try:
                idempotency_key_reset(
                    environment=run.environment, task_identifier=run.task_identifier, key=run.idempotency_key
                )
                done += 1
            except IdempotencyKeyNotFound:
                continue
        self.message_user(request, f"Released {done} idempotency key(s).")

    # -- buffered runs (Redis) ----------------------------------------------------------------

    def get_urls(self):
        view = self.admin_site.admin_view
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
        context = {
            **self.admin_site.each_context(request),
            "title": f"{run_id} (waiting in the buffer)",
            "opts": self.model._meta,
            "run": run,
            "entry": entry,
            "environment": environment,
            "where": "draining" if leased else "buffered",
            "dwell_seconds": max(0, now_ms() - entry.accepted_at_ms) / 1000,
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


@admin.register(BatchTaskRun)
class BatchTaskRunAdmin(admin.ModelAdmin):
    list_display = ["friendly_id", "status", "run_count", "sealed", "environment", "created_at"]
    list_select_related = ["environment__project__organization"]


@admin.register(MollifierDashboard)
class MollifierDashboardAdmin(admin.ModelAdmin):
    """The buffer at a glance: depth per environment, dwell, leases, drain rate, gate decisions."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path(
                "drain/<str:org_id>/<str:env_id>/",
                view(require_POST(self.drain_now)),
                name="runs_mollifierdashboard_drain",
            ),
            *super().get_urls(),
        ]

    def changelist_view(self, request, extra_context=None):
        if not self.has_view_permission(request):
            raise PermissionDenied
        now = now_ms()
        context = {
            **self.admin_site.each_context(request),
            "title": "Mollifier dashboard",
            "opts": self.model._meta,
            "settings": _knobs(),
            "can_drain": request.user.has_perm("runs.change_taskrun"),
            "redis": redis_status(),  # shown also when Redis does not answer
        }
        try:
            rows = env_stats(now_ms=now)
            enrolled = [
                str(pk)
                for pk in Organization.objects.filter(feature_flags__mollifierEnabled=True).values_list("pk", flat=True)
            ]
            orgs = sorted({row.org_id for row in rows} | set(enrolled) | set(shadow_orgs(since_ms=now - 3_600_000)))
            minutes = timeline(org_ids=orgs, now_ms=now)
            parked = buffer.parked_entries(limit=100)
            dropped_count, _ = buffer.recently_dropped(limit=0)
        except BufferUnavailable:
            context["error"] = "The buffer's Redis did not answer."
            return TemplateResponse(request, "admin/runs/mollifier_dashboard.html", context)
        environments = RuntimeEnvironment.objects.select_related("project__organization").in_bulk(
            [int(row.env_id) for row in rows if row.env_id.isdigit()]
        )
        table = [
            {
                "row": row,
                "name": str(environments.get(int(row.env_id), f"org {row.org_id} env {row.env_id}")),
                "oldest_seconds": row.oldest_age_ms(now) / 1000,
            }
            for row in rows
        ]
        recent = minutes[-5:]
        context.update(
            parked=parked,
            dropped_count=dropped_count,
            rows=table,
            totals={
                "waiting": sum(r.waiting for r in rows),
                "leased": sum(r.leased for r in rows),
                "expired": sum(r.expired_leases for r in rows),
                "oldest_seconds": max((r.oldest_age_ms(now) for r in rows), default=0) / 1000,
                "drained_per_minute": round(sum(m["drained"] for m in recent) / len(recent)),
                "tripped": sum(r.tripped for r in rows),
            },
            depth_chart=charts.horizontal_bars([(item["name"], item["row"].waiting) for item in table[:20]]),
            decisions_chart=charts.stacked_bars(
                minutes,
                [
                    ("pass_through", "#79aec8", "pass-through"),
                    ("mollify", "#e0a800", "mollified"),
                    ("shadow", "#a0a0a0", "shadow"),
                    ("refused", "#ba2121", "refused (cap)"),
                ],
            ),
            drained_chart=charts.stacked_bars(minutes, [("drained", "#417690", "rows drained")]),
        )
        return TemplateResponse(request, "admin/runs/mollifier_dashboard.html", context)

    def drain_now(self, request, org_id: str, env_id: str):
        if not request.user.has_perm("runs.change_taskrun"):
            raise PermissionDenied
        result = Drainer().drain_environment(org_id=org_id, env_id=env_id)
        messages.success(
            request, f"Drained {result.acked} run(s) of that environment ({result.report.inserted} inserted)."
        )
        return HttpResponseRedirect(reverse("admin:runs_mollifierdashboard_changelist"))


def _knobs() -> dict:
    return {
        "enabled": conf.enabled(),
        "shadow": conf.shadow_mode(),
        "threshold": conf.trip_threshold(),
        "window_ms": conf.trip_window_ms(),
        "hold_ms": conf.hold_ms(),
        "cap": conf.drain_max_rows_per_sec(),
        "org_cap": conf.org_buffer_cap(),
        "org_max_bytes": conf.org_buffer_max_bytes(),
    }
