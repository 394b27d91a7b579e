"""The buffer's own admin pages: the dashboard (depth and drain ETA per environment, dwell, leases,
gate decisions and rows drained per minute, the allowed drain rate over time, parked runs) and
"drain this environment now". Renders and
dispatches; the numbers come from mollifier/stats.py."""

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.views.decorators.http import require_POST

from mollifier import charts, conf, drainer
from mollifier.clock import now_ms
from mollifier.directory import get_directory
from mollifier.exceptions import BufferUnavailable
from mollifier.models import Dashboard
from mollifier.stats import dashboard, postgres_status, redis_status

DRAIN_PERMISSION = "mollifier.drain_buffer"
DECISION_LAYERS = [
    ("pass_through", "#79aec8", "pass-through"),
    ("mollify", "#e0a800", "mollified"),
    ("shadow", "#a0a0a0", "shadow"),
    ("refused", "#ba2121", "refused (cap)"),
]


@admin.register(Dashboard)
class DashboardAdmin(admin.ModelAdmin):
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
                "drain/<str:org_id>/<str:env_id>/", view(require_POST(self.drain_now)), name="mollifier_dashboard_drain"
            ),
            *super().get_urls(),
        ]

    def changelist_view(self, request, extra_context=None):
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "title": "Mollifier dashboard",
            "opts": self.model._meta,
            "settings": _knobs(),
            "can_drain": request.user.has_perm(DRAIN_PERMISSION),
            "redis": redis_status(),  # shown also when Redis does not answer
            "postgres": postgres_status(),
        }
        try:
            board = dashboard(now_ms=now_ms(), directory=get_directory())
        except BufferUnavailable:
            context["error"] = "The buffer's Redis did not answer."
            return TemplateResponse(request, "admin/mollifier/dashboard.html", context)
        context.update(
            board=board,
            depth_chart=charts.horizontal_bars([(row.label, row.stats.waiting) for row in board.rows[:20]]),
            decisions_chart=charts.stacked_bars(board.minutes, DECISION_LAYERS),
            drained_chart=charts.stacked_bars(board.minutes, [("drained", "#417690", "rows drained")]),
            rate_chart=charts.line(
                board.rate_minutes,
                "rate",
                label="allowed drain rate (mean of the minute)",
                unit="rows/s",
                ceiling=board.drain.ceiling if board.drain else None,
                ceiling_label="ceiling (MOLLIFIER_DRAIN_MAX_ROWS_PER_SEC)",
            ),
        )
        return TemplateResponse(request, "admin/mollifier/dashboard.html", context)

    def drain_now(self, request, org_id: str, env_id: str):
        if not request.user.has_perm(DRAIN_PERMISSION):
            raise PermissionDenied
        try:
            drained = drainer.Drainer().drain_environment_now(org_id=org_id, env_id=env_id)
        except BufferUnavailable:
            messages.error(request, "Nothing drained: the buffer's Redis did not answer. Try again shortly.")
        else:
            done = f"{drained.acked} run(s) of that environment ({drained.inserted} inserted)"
            if drained.database_error and not drained.acked:
                messages.error(request, "Nothing drained: Postgres could not be reached. Try again shortly.")
            elif drained.database_error:
                messages.error(request, f"Drained {done}, then Postgres could not be reached. Try again shortly.")
            elif drained.still_ready is None:
                messages.error(request, f"Drained {done}, then the buffer's Redis did not answer. Try again shortly.")
            elif drained.rate_held and not drained.acked:
                messages.warning(
                    request,
                    f"Nothing drained: the drain's rate cap granted no round within {drainer.DRAIN_NOW_SECONDS:g} s "
                    f"(other drainers use it too); {drained.still_ready} still ready, left to the drainers.",
                )
            elif drained.still_ready:
                messages.warning(
                    request,
                    f"Drained {done} in {drained.rounds} round(s) ({drainer.DRAIN_NOW_SECONDS:g} s at most, under the "
                    f"drain's rate cap); {drained.still_ready} still ready, left to the drainers.",
                )
            else:
                messages.success(request, f"Drained {done}: nothing of it is left ready.")
        return HttpResponseRedirect(reverse("admin:mollifier_dashboard_changelist"))


def _knobs() -> dict:
    return {
        "enabled": conf.enabled(),
        "shadow": conf.shadow_mode(),
        "threshold": conf.trip_threshold(),
        "window_ms": conf.trip_window_ms(),
        "hold_ms": conf.hold_ms(),
        "cap": conf.drain_max_rows_per_sec(),
        "rate_mode": conf.drain_rate_mode(),
        "floor": conf.drain_min_rows_per_sec(),
        "target_ms": conf.drain_target_commit_ms(),
        "org_cap": conf.org_buffer_cap(),
        "org_max_bytes": conf.org_buffer_max_bytes(),
    }
