from django.db import DatabaseError
from django.template.defaultfilters import filesizeformat, pluralize

from mollifier import buffer, conf
from mollifier.clock import now_ms
from mollifier.management.base import BufferCommand
from mollifier.stats import env_stats, redis_status
from runs.models import RuntimeEnvironment


def _size(count: int) -> str:
    return filesizeformat(count).replace("\xa0", " ")  # a terminal, not HTML


class Command(BufferCommand):
    help = (
        "Show the mollifier buffer: depth per organisation and environment, oldest dwell, leases, gate "
        "state; parked runs (no row could be written) and runs dropped because their environment was "
        "deleted. The first line shows the settings this command runs with: its environment's, and "
        "beside `make run` on the embedded servers, make run's (.dev/env) where its environment sets none."
    )

    def handle(self, *args, **options):
        now = now_ms()
        # The settings first: they need no Redis, and say something when Redis does not answer.
        self.stdout.write(
            f"mollifier {'ON' if conf.enabled() else 'OFF'}{' (shadow mode)' if conf.shadow_mode() else ''}; "
            f"trip {conf.trip_threshold()} per {conf.trip_window_ms()} ms, hold {conf.hold_ms()} ms; "
            f"drain cap {conf.drain_max_rows_per_sec():,} rows/s; organisation cap {conf.org_buffer_cap():,} waiting "
            "(the settings this command runs with)"
        )
        rows = env_stats(now_ms=now)
        self.stdout.write(self._memory())
        names = self._names([row.env_id for row in rows] + [entry.env_id for entry in buffer.parked_entries(limit=10)])
        if rows:
            self._table(rows, names, now)
            # One snapshot: the total is the table's own sum, so the two never disagree mid-drain.
            waiting, orgs = sum(row.waiting for row in rows), {row.org_id for row in rows}
            held = sum(buffer.buffered_bytes(org) for org in orgs)
            self.stdout.write(
                f"total waiting: {waiting:,} in {len(orgs)} organisation{pluralize(len(orgs))}, {len(rows)} "
                f"environment{pluralize(len(rows))}, {_size(held)} "
                f"(per organisation at most {conf.org_buffer_cap():,} runs, {_size(conf.org_buffer_max_bytes())})"
            )
        else:
            self.stdout.write("buffer empty")
        parked = buffer.parked_entries(limit=10)
        if parked:
            total = sum(buffer.parked_count(org) for org in buffer.parked_orgs())
            self.stdout.write(
                f"PARKED: {total:,} run{pluralize(total)} no row could be written for "
                "(see `manage.py mollifier_parked list`):"
            )
            for entry in parked:
                error = (entry.last_error or {}).get("message", "")
                self.stdout.write(
                    f"  {entry.run_id}  {(names or {}).get(entry.env_id, 'env ' + entry.env_id)}  {error[:100]}"
                )
        dropped, latest = buffer.recently_dropped(limit=5)
        if dropped:
            self.stdout.write(
                f"dropped: {dropped:,} run{pluralize(dropped)} on record left without a row (environment deleted); "
                "latest: " + ", ".join(record["run"] for record in latest)
            )

    def _names(self, env_ids: list[str]) -> dict[str, str] | None:
        """Environments' names, from Postgres. The operator runs this command exactly when something
        is down: without Postgres, what the buffer holds is still shown, by id."""
        try:
            environments = RuntimeEnvironment.objects.select_related("project__organization").by_ids(env_ids)
        except DatabaseError as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            self.stdout.write(f"postgres did not answer ({first_line}): environments are shown by id")
            return None
        return {env_id: str(environment) for env_id, environment in environments.items()}

    @staticmethod
    def _memory() -> str:
        status = redis_status()
        reading, limit = status.memory, status.memory_limit_percent
        if reading is None:
            return "redis memory: unknown (INFO refused)"
        if not reading.max_bytes:
            return f"redis memory: {_size(reading.used_bytes)}, no maxmemory set (the memory guard is off)"
        state = "NEW ENTRIES REFUSED" if status.memory_guard else f"new entries refused from {limit}%"
        return f"redis memory: {reading.ratio:.0%} of {_size(reading.max_bytes)} ({_size(reading.used_bytes)}); {state}"

    def _table(self, rows, names: dict[str, str] | None, now: int) -> None:
        names_unknown, names = names is None, names or {}
        header = ("environment", "waiting", "ready", "leased", "expired", "oldest", "gate")
        table = [header] + [
            (
                names.get(row.env_id, f"org {row.org_id} env {row.env_id}" + ("" if names_unknown else " (deleted)")),
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
