import json as json_lib
import threading

from django.template.defaultfilters import pluralize

from mollifier import conf
from mollifier.clock import now_ms
from mollifier.exceptions import BufferUnavailable
from mollifier.management.base import BufferCommand, stop_on_signals
from mollifier.sweep import sweep


class Command(BufferCommand):
    help = (
        "Sweep the mollifier buffer once (or every --every seconds): reclaim expired drain leases, "
        "report runs waiting longer than MOLLIFIER_STALE_AFTER_MS and the oldest age, and repair the "
        "organisation index. One sweeper at a time holds a Redis lease; others skip. Exit code 2 "
        "when stale runs were found (for cron alerts), 3 when another sweeper held the lease. With "
        "--every, SIGTERM or Ctrl-C finishes the sweep in hand and exits."
    )

    def add_arguments(self, parser):
        parser.add_argument("--every", type=float, default=0, help="repeat every N seconds until stopped")
        parser.add_argument("--json", action="store_true", help="print the report as JSON")
        parser.add_argument(
            "--quiet",
            action="store_true",
            help="print a sweep's report only when it found or repaired something (stale runs, leases, the index)",
        )

    def handle(self, *args, every, json: bool, quiet: bool, **options):
        # On a loop, a stop finishes the sweep in hand; the wait for the next one ends at once.
        stop = stop_on_signals() if every else threading.Event()
        while not stop.is_set():
            try:
                report = sweep(now_ms=now_ms())
            except BufferUnavailable as error:
                if not every:
                    raise
                # A sweeper on a loop outlives a Redis outage: say so and try again next time.
                self.stderr.write(f"sweep skipped: the buffer's Redis did not answer ({error})")
                self.stderr.flush()
                stop.wait(every)
                continue
            if report is None:
                self.stderr.write("another sweeper holds the lease; skipped")
                if not every:
                    raise SystemExit(3)
            elif quiet and not _found_anything(report):
                pass
            elif json:
                self.stdout.write(_json({**report.__dict__, "stale_after_ms": conf.stale_after_ms()}))
            else:
                self.stdout.write(
                    f"sweep: {report.waiting:,} waiting in {report.envs:,} environment{pluralize(report.envs)} of "
                    f"{report.orgs:,} organisation{pluralize(report.orgs)}; {report.stale:,} older than "
                    f"{conf.stale_after_ms() / 1000:g}s (MOLLIFIER_STALE_AFTER_MS; oldest {report.oldest_age_ms / 1000:.1f}s); "
                    f"{report.expired_leases:,} expired lease{pluralize(report.expired_leases)} reclaimed; "
                    f"index: +{report.reindexed_orgs} -{report.unindexed_orgs}"
                )
            if not every:
                if report is not None and report.stale:
                    raise SystemExit(2)
                return
            self.stdout.flush()  # a report is read as it happens (a pipe would hold it), then the wait
            self.stderr.flush()
            stop.wait(every)


def _found_anything(report) -> bool:
    return bool(
        report.stale or report.expired_leases or report.settled_pins or report.reindexed_orgs or report.unindexed_orgs
    )


def _json(data: dict) -> str:
    return json_lib.dumps(data, sort_keys=True)
