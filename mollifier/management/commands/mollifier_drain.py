import gc
import sys
import time

from django.core.management.base import BaseCommand
from django.template.defaultfilters import pluralize

from mollifier import breaker, buffer, conf
from mollifier.drainer import Drainer, RoundResult, Waiting
from mollifier.exceptions import BufferUnavailable
from mollifier.management.base import stop_on_signals
from mollifier.sink import SinkReport


class Progress:
    """A live line on a terminal (every second), a log line otherwise (every 10 s), and totals."""

    def __init__(self, out, *, live: bool, quiet: bool = False):
        self.out, self.live, self.quiet = out, live, quiet
        self.started = self.last_print = time.monotonic()
        self.report = SinkReport()
        self.rounds = self.retried = self.failed = self.reclaimed = self.acked = self.settled = self.parked = 0
        self.waits = 0
        self.window_start, self.window_rows = time.monotonic(), 0
        self.rate_limit = 0.0

    def __call__(self, result: RoundResult) -> None:
        self.rounds += 1
        self.report += result.report
        self.retried += result.retried
        self.failed += result.failed
        self.reclaimed += result.reclaimed
        self.acked += result.acked
        self.settled += result.settled
        self.parked += result.parked
        self.window_rows += result.acked
        self.rate_limit = result.rate_limit or self.rate_limit
        now = time.monotonic()
        if not self.quiet and now - self.last_print >= (1 if self.live else 10):
            rate = self.window_rows / max(now - self.window_start, 1e-6)
            line = (
                f"drained {self.acked:,} run{pluralize(self.acked)}  {rate:,.0f} rows/s  backlog {self._backlog()}  "
                f"retried {self.retried:,}  failed {self.failed:,}  parked {self.parked:,}"
            )
            line += f"  allowed {self.rate_limit:,.0f} rows/s"  # the shared drain rate (adaptive: it moves)
            if self.live:
                self.out.write("\r" + line.ljust(100), ending="")
                self.out.flush()
            else:
                self.out.write(f"mollifier.drain.progress {line}")
            self.last_print, self.window_start, self.window_rows = now, now, 0

    def waiting(self, wait: Waiting) -> None:
        """The loop backs off: say what it waits for (live line, or a log line per wait)."""
        self.waits += 1
        if self.quiet:
            return
        line = (
            f"waiting for {wait.dependency}: {wait.failures} failure{pluralize(wait.failures)} in a row, "
            f"next try in {wait.retry_in_ms / 1000:.1f}s ({wait.error[:80]})"
        )
        if self.live:
            self.out.write("\r" + line.ljust(100), ending="")
            self.out.flush()
        else:
            self.out.write(f"mollifier.drain.progress {line}")
        self.last_print = time.monotonic()

    @staticmethod
    def _backlog() -> str:
        try:
            return f"{buffer.buffered_total(buffer.active_orgs()):,}"
        except BufferUnavailable:
            return "?"

    def summary(self) -> str:
        elapsed = time.monotonic() - self.started
        r = self.report
        return (
            f"mollifier_drain: {self.acked:,} run{pluralize(self.acked)} acked in {elapsed:.1f}s "
            f"({self.acked / max(elapsed, 1e-6):,.0f}/s): {r.inserted:,} inserted, {r.already:,} already written, "
            f"{r.failed:,} SYSTEM_FAILURE row{pluralize(r.failed)}, {r.dropped:,} dropped (environment gone), "
            f"{r.fenced:,} fenced (lease taken back); {self.retried:,} retr{pluralize(self.retried, 'y,ies')}, "
            f"{self.failed:,} marked terminal, {self.parked:,} parked, {self.reclaimed:,} lease{pluralize(self.reclaimed)} "
            f"reclaimed, {self.settled:,} pin{pluralize(self.settled)} settled, {self.rounds:,} round{pluralize(self.rounds)}, "
            f"{self.waits:,} wait{pluralize(self.waits)} for Redis or Postgres"
        )


class Command(BaseCommand):
    help = (
        "Drain the mollifier buffer into Postgres: fairly across organisations and environments, "
        "in bulk, under MOLLIFIER_DRAIN_MAX_ROWS_PER_SEC shared by every drainer. Run as many as you "
        "like. SIGTERM or Ctrl-C finishes the current round, acks it and exits."
    )

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="drain until nothing is waiting, then exit")
        parser.add_argument(
            "--quiet", action="store_true", help="no progress lines: the settings at start and the summary at exit"
        )

    def handle(self, *args, once, quiet, **options):
        breaker.disable()  # not a request path: the loop's backoff spaces calls to a sick Redis
        stop = stop_on_signals()  # the loop finishes the round in hand, acks it, then returns
        progress = Progress(self.stdout, live=self.stdout.isatty() and not quiet, quiet=quiet)
        # Always, --quiet included: which settings this drainer runs with (README: Settings).
        self.stdout.write(
            f"mollifier_drain: batch {conf.drain_batch_size():,} per environment, "
            f"cap {conf.drain_max_rows_per_sec():,} rows/s shared by every drainer, "
            f"lease {conf.drain_lease_ms():,} ms{' (once)' if once else ''}"
        )
        # Everything loaded so far (Django, the app) lives as long as the process: out of the
        # collector's sight, a round's tens of thousands of short-lived objects no longer make
        # each collection walk it (a collection inside reading 1,000 entries cost ~100 ms).
        gc.freeze()
        # A round allocates tens of objects per run, nearly all gone when the round is: with the
        # default threshold (700) a young collection ran every ~25 runs, walking the round's live
        # entries, and cost the drain 3.8 µs a row (a tenth of its CPU). At 50,000 it runs once in
        # several rounds (0.3 µs a row). The older generations keep their defaults.
        thresholds = gc.get_threshold()
        gc.set_threshold(50_000, *thresholds[1:])
        try:
            Drainer(stop=stop).run(once=once, on_round=progress, on_wait=progress.waiting)
        finally:
            gc.set_threshold(*thresholds)  # called in-process (tests, call_command): leave it as found
        if progress.live:
            self.stdout.write("")
        self.stdout.write(progress.summary())
        sys.stdout.flush()
