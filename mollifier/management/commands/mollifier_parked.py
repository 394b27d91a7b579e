import json
import logging

from django.core.management.base import CommandError

from mollifier import buffer
from mollifier.clock import now_ms
from mollifier.management.base import BufferCommand

logger = logging.getLogger("mollifier.parked")


class Command(BufferCommand):
    help = (
        "Buffered runs the drainer parked: no row could be written for them, not even a minimal "
        "SYSTEM_FAILURE row. `list` shows them; `show RUN` prints one (snapshot, error, attempts); "
        "`retry RUN` gives it back to the drain with its attempts reset (after fixing the cause); "
        "`discard RUN --reason …` removes it for good, without a row, and logs who decided and why."
    )

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["list", "show", "retry", "discard"])
        parser.add_argument("run_id", nargs="?", help="run_… (show, retry, discard)")
        parser.add_argument("--reason", default="", help="why the run is discarded (required by discard)")

    def handle(self, *args, action, run_id, reason, **options):
        parked = buffer.parked_entries()
        if action == "list":
            if not parked:
                self.stdout.write("no parked runs")
            for entry in parked:
                error = (entry.last_error or {}).get("message", "")
                self.stdout.write(f"{entry.run_id}  org {entry.org_id} env {entry.env_id}  {entry.task}  {error[:120]}")
            return
        if not run_id:
            raise CommandError(f"{action} needs a run id (run_…)")
        found = next((item for item in parked if item.run_id == run_id), None)
        if found is None:
            raise CommandError(f"{run_id} is not parked")
        entry = found
        if action == "show":
            self.stdout.write(json.dumps(_describe(entry), indent=2, ensure_ascii=False, default=str))
        elif action == "retry":
            buffer.unpark(entry, now_ms=now_ms())
            logger.warning("mollifier.parked.retried run=%s org=%s env=%s", entry.run_id, entry.org_id, entry.env_id)
            self.stdout.write(f"{run_id} is back in the drain")
        else:
            if not reason.strip():
                raise CommandError("discard needs --reason (it is logged: the run is removed without a row)")
            buffer.discard(entry)
            logger.warning(
                "mollifier.parked.discarded run=%s org=%s env=%s reason=%s",
                entry.run_id,
                entry.org_id,
                entry.env_id,
                reason,
            )
            self.stdout.write(f"{run_id} discarded: {reason}")


def _describe(entry) -> dict:
    return {
        "run": entry.run_id,
        "organization": entry.org_id,
        "environment": entry.env_id,
        "task": entry.task,
        "accepted_at_ms": entry.accepted_at_ms,
        "parked_at_ms": entry.parked_at_ms,
        "attempts": entry.attempts,
        "last_error": entry.last_error,
        "snapshot": entry.snapshot if entry.snapshot is not None else entry.raw_snapshot,
    }
