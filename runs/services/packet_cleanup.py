"""Removing packets that no run names (``manage.py packets_cleanup``), safe to run from cron.

A packet is removed only when all of these hold:

- neither its upload nor a trigger naming it is more recent than the cutoff (``uploaded_at`` and
  ``used_at``): every trigger stamps ``used_at`` before it writes anything (runs.services.packets),
  so a run about to name a packet keeps it;
- no buffered run names it. Only entries accepted before the cutoff can (a later one would have
  stamped the packet), so a healthy buffer costs one empty range read per environment. A backlog
  past SCAN_LIMIT, an unreadable entry or an unreachable Redis keeps the environment's packets for
  the next run;
- no written run names it. Those found are marked ``referenced_at`` and never looked at again.

The buffer is read before Postgres, so a run moving from one to the other meanwhile is seen in one
of them, never in neither (the order the listing uses, DESIGN §8). The row is then deleted under a
row lock that re-checks the cutoff, so a trigger stamping it at that moment wins; the object goes
after the row. Objects in the store with no row and older than the cutoff (an upload that died
between storing and recording, an object whose row went first) are removed as well. Concurrent runs
skip each other's locked rows, and deleting an object twice is harmless.
"""

import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q, QuerySet

from mollifier import buffer
from mollifier.exceptions import BufferUnavailable
from runs.models import Packet, TaskRun
from runs.services.packets import PACKET_TYPE, packet_storage
from runs.snapshots import to_ms

logger = logging.getLogger(__name__)

SCAN_LIMIT = 10_000  # buffered entries older than the cutoff read per environment
CLOCK_SKEW = timedelta(hours=1)  # between the web processes' clocks and this one's
BATCH_SIZE = 500
_ENV_FOLDER = re.compile(r"env_[0-9]{1,18}")


@dataclass
class CleanupReport:
    deleted: list[str] = field(default_factory=list)  # packets removed, row and object
    deleted_bytes: int = 0
    orphans: list[str] = field(default_factory=list)  # objects removed that had no row
    referenced: int = 0  # newly found named by a written run: kept for good
    kept_buffered: int = 0  # named by a run still in the buffer
    kept_unsure: int = 0  # the buffer could not be read completely: next run decides
    failed: int = 0  # objects the store would not delete (retried as orphans next run)


def packets_cleanup(*, older_than: timedelta, now: datetime, dry_run: bool = False) -> CleanupReport:
    """Remove the packets no run names, unused for ``older_than``; with ``dry_run`` only report."""
    cutoff = now - older_than
    report = CleanupReport()
    last_pk = 0
    while batch := list(
        _unused(cutoff).filter(pk__gt=last_pk).select_related("environment").order_by("pk")[:BATCH_SIZE]
    ):
        last_pk = batch[-1].pk
        by_environment: dict[int, list[Packet]] = defaultdict(list)
        for packet in batch:
            by_environment[packet.environment_id].append(packet)
        for packets in by_environment.values():
            _clean_environment(packets, cutoff=cutoff, now=now, dry_run=dry_run, report=report)
    _remove_orphans(cutoff=cutoff, dry_run=dry_run, report=report)
    return report


def _unused(cutoff: datetime) -> QuerySet[Packet]:
    return Packet.objects.filter(referenced_at__isnull=True, uploaded_at__lt=cutoff).filter(
        Q(used_at__isnull=True) | Q(used_at__lt=cutoff)
    )


def _clean_environment(
    packets: list[Packet], *, cutoff: datetime, now: datetime, dry_run: bool, report: CleanupReport
) -> None:
    environment = packets[0].environment
    paths = {packet.path for packet in packets}
    buffered = _buffered_paths(
        org_id=environment.organization_id, env_id=environment.pk, until_ms=to_ms(cutoff + CLOCK_SKEW)
    )
    if buffered is None:
        report.kept_unsure += len(packets)
        return
    # A run naming a packet was triggered after its upload: the listing index bounds the scan.
    written = set(
        TaskRun.objects.filter(
            environment_id=environment.pk,
            created_at__gte=min(packet.uploaded_at for packet in packets) - CLOCK_SKEW,
            payload_type=PACKET_TYPE,
            payload__in=paths,
        )
        .values_list("payload", flat=True)
        .distinct()
    )
    if written and not dry_run:
        Packet.objects.filter(environment_id=environment.pk, path__in=written).update(referenced_at=now)
    report.referenced += len(written)
    report.kept_buffered += len((paths & buffered) - written)
    doomed = [packet for packet in packets if packet.path not in written and packet.path not in buffered]
    if dry_run:
        report.deleted += [packet.path for packet in doomed]
        report.deleted_bytes += sum(packet.size for packet in doomed)
        return
    with transaction.atomic():
        rows = list(
            _unused(cutoff)
            .select_for_update(skip_locked=True)
            .filter(pk__in=[packet.pk for packet in doomed])
            .values_list("pk", "path", "size")
        )
        Packet.objects.filter(pk__in=[pk for pk, _, _ in rows]).delete()
    for _, path, size in rows:
        if _delete_object(path, report):
            report.deleted.append(path)
            report.deleted_bytes += size


def _buffered_paths(*, org_id: int, env_id: int, until_ms: int) -> set[str] | None:
    """Packet paths named by the environment's buffered runs accepted until ``until_ms``; None when
    that cannot be told completely."""
    try:
        scan = buffer.listing(
            org_id=str(org_id),
            env_id=str(env_id),
            newest_first=True,
            limit=SCAN_LIMIT,
            beyond=(f"{until_ms}.5", ""),  # every run accepted until until_ms, inclusive
        )
        entries, more = scan.entries, not scan.exhausted
    except BufferUnavailable:
        logger.warning("runs.packets.cleanup.buffer_unreadable env=%s", env_id, exc_info=True)
        return None
    if more:
        logger.warning("runs.packets.cleanup.buffer_backlog env=%s over=%s", env_id, SCAN_LIMIT)
        return None
    paths = set()
    for entry in entries:
        if entry.snapshot is None:
            return None  # an unreadable entry might name any packet
        if entry.snapshot.get("payload_type") == PACKET_TYPE and isinstance(entry.snapshot.get("payload"), str):
            paths.add(entry.snapshot["payload"])
    return paths


def _delete_object(path: str, report: CleanupReport) -> bool:
    try:
        packet_storage().delete(path)
    except Exception:
        # Whatever the backend raises (OSError, botocore's errors): the object stays, without a
        # row, and the next run removes it as an orphan.
        logger.warning("runs.packets.cleanup.delete_failed path=%s", path, exc_info=True)
        report.failed += 1
        return False
    _prune_empty_folders(path)
    return True


def _prune_empty_folders(path: str) -> None:
    """A local store keeps the folders a packet was written into; object stores have none (their
    storage has no ``path()``)."""
    storage = packet_storage()
    folder = os.path.dirname(path)
    while folder:
        try:
            os.rmdir(storage.path(folder))
        except NotImplementedError:
            return
        except OSError:
            return  # not empty (or gone): an upload may be writing into it
        folder = os.path.dirname(folder)


def _walk(folder: str = "") -> Iterator[str]:
    """Every object under the environments' folders. Only ``env_<id>`` folders are entered: a store
    pointed by mistake at a folder with other files in it loses none of them."""
    storage = packet_storage()
    try:
        folders, files = storage.listdir(folder)
    except FileNotFoundError:
        return  # a local store that never received a packet
    if folder:
        yield from (f"{folder}/{name}" for name in files)
    for name in folders:
        if folder or _ENV_FOLDER.fullmatch(name):
            yield from _walk(f"{folder}/{name}" if folder else name)


def _remove_orphans(*, cutoff: datetime, dry_run: bool, report: CleanupReport) -> None:
    storage = packet_storage()
    batch: list[str] = []

    def flush() -> None:
        known = set(Packet.objects.filter(path__in=batch).values_list("path", flat=True))
        for path in batch:
            # The modification time is only asked for objects without a row: on S3 it costs a request.
            if path in known:
                continue
            try:
                if storage.get_modified_time(path) >= cutoff:
                    continue
            except FileNotFoundError:
                continue  # removed meanwhile (a concurrent cleanup)
            if Packet.objects.filter(path=path).exists():
                continue  # recorded since the listing: an upload that just finished
            if dry_run or _delete_object(path, report):
                report.orphans.append(path)
        batch.clear()

    for path in _walk():
        batch.append(path)
        if len(batch) >= BATCH_SIZE:
            flush()
    if batch:
        flush()
