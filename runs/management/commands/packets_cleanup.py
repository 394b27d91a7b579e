import argparse
import json as json_lib
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.template.defaultfilters import pluralize
from django.utils import timezone

from runs import conf, durations
from runs.services.packet_cleanup import packets_cleanup

# Below this a packet could go between its upload and a trigger held up by a slow client; the
# presigned upload URL alone lives PACKETS_URL_TTL_SECONDS.
MIN_OLDER_THAN = timedelta(hours=1)


def _duration(value: str) -> timedelta:
    if (parsed := durations.parse_natural_duration(value)) is None:
        raise argparse.ArgumentTypeError(f"not a duration like 24h or 1d12h: {value!r}")
    return parsed


class Command(BaseCommand):
    help = (
        "Remove packets (offloaded payloads) that no run names, once unused for --older-than "
        "(default PACKETS_CLEANUP_GRACE_SECONDS), and objects in the packets store that have no record. "
        "Safe to run from cron: runs at the same time skip each other's work, and a second run finds "
        "nothing left to do."
    )

    def add_arguments(self, parser):
        parser.add_argument("--older-than", type=_duration, default=None, help="e.g. 24h, 2d (at least 1h)")
        parser.add_argument("--dry-run", action="store_true", help="report what would be removed, remove nothing")
        parser.add_argument("--json", action="store_true", help="print the report as JSON")

    def handle(self, *args, older_than: timedelta | None, dry_run: bool, json: bool, **options):
        older_than = older_than or timedelta(seconds=conf.packet_cleanup_grace_seconds())
        if older_than < MIN_OLDER_THAN:
            raise CommandError(f"--older-than must be at least {MIN_OLDER_THAN}")
        report = packets_cleanup(older_than=older_than, now=timezone.now(), dry_run=dry_run)
        if json:
            self.stdout.write(json_lib.dumps({"dry_run": dry_run, **report.__dict__}, sort_keys=True))
            return
        verb = "would remove" if dry_run else "removed"
        for path in report.deleted:
            self.stdout.write(f"{verb} {path}")
        for path in report.orphans:
            self.stdout.write(f"{verb} {path} (no record)")
        deleted, orphans = len(report.deleted), len(report.orphans)
        self.stdout.write(
            f"packets_cleanup: {verb} {deleted:,} unused packet{pluralize(deleted)} ({report.deleted_bytes:,} "
            f"byte{pluralize(report.deleted_bytes)}) and {orphans:,} unrecorded object{pluralize(orphans)} older than "
            f"{older_than.total_seconds() / 3600:g}h; {report.referenced:,} newly found in use by runs, "
            f"{report.kept_buffered:,} kept for buffered runs, {report.kept_unsure:,} kept because the buffer could "
            f"not be read completely, {report.failed:,} failed delete{pluralize(report.failed)} (retried next run)"
        )
