from django.core.management.base import BaseCommand

from mollifier import buffer, conf
from mollifier.drainer import now_ms
from mollifier.stats import env_stats
from runs.models import RuntimeEnvironment


class Command(BaseCommand):
    help = "Show the mollifier buffer: depth per organisation and environment, oldest dwell, leases, gate state."

    def handle(self, *args, **options):
        now = now_ms()
        rows = env_stats(now_ms=now)
        self.stdout.write(
            f"mollifier {'ON' if conf.enabled() else 'OFF'}{' (shadow mode)' if conf.shadow_mode() else ''}; "
            f"trip {conf.trip_threshold()} per {conf.trip_window_ms()} ms, hold {conf.hold_ms()} ms; "
            f"drain cap {conf.drain_max_rows_per_sec():,} rows/s"
        )
        if not rows:
            self.stdout.write("buffer empty")
            return
        names = {
            str(env.pk): str(env)
            for env in RuntimeEnvironment.objects.filter(
                pk__in=[int(r.env_id) for r in rows if r.env_id.isdigit()]
            ).select_related("project__organization")
        }
        header = ("environment", "waiting", "ready", "leased", "expired", "oldest", "gate")
        table = [header] + [
            (
                names.get(row.env_id, f"org {row.org_id} env {row.env_id} (deleted)"),
                f"{row.waiting:,}",
                f"{row.ready:,}",
                f"{row.leased:,}",
                f"{row.expired_leases:,}",
                f"{row.oldest_age_ms(now) / 1000:.1f}s",
                "TRIPPED" if row.tripped else "open",
            )
            for row in rows
        ]
        widths = [max(len(line[i]) for line in table) for i in range(len(header))]
        for line in table:
            self.stdout.write(
                "  ".join(
                    cell.ljust(width) if i == 0 else cell.rjust(width)
                    for i, (cell, width) in enumerate(zip(line, widths))
                )
            )
        totals = {org: buffer.buffered_count(org) for org in {row.org_id for row in rows}}
        self.stdout.write(f"total waiting: {sum(totals.values()):,} in {len(totals)} organisations")
