"""packets_cleanup: packets no run names go after the grace period; nothing a run names ever does."""

import os
import threading
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from runs.models import Packet, TaskRun
from runs.services.packet_cleanup import SCAN_LIMIT, packets_cleanup
from runs.services.packets import packet_storage
from tests.buffering import fill_buffer
from tests.packets import big_payload, trigger_packet, upload
from tests.runs.test_buffered_everywhere import drain

pytestmark = pytest.mark.django_db

DAY = timedelta(days=1)


def later(days: float = 2):
    return timezone.now() + timedelta(days=days)


def warm_up(api, count: int = 5) -> None:
    """Trip the test gate (5 triggers a minute): the next trigger is buffered."""
    for i in range(count):
        api.post("/api/v1/tasks/warm/trigger", {"payload": str(i)}, format="json")


def test_only_packets_no_run_names_are_removed(api, enrolled, packets_root):
    unused = upload(api, big_payload(1), filename="trigger/packet_unused/payload.json")
    written = upload(api, big_payload(1), filename="trigger/packet_written/payload.json")
    buffered = upload(api, big_payload(1), filename="trigger/packet_buffered/payload.json")
    trigger_packet(api, written)
    warm_up(api)
    assert trigger_packet(api, buffered).headers["x-mollifier"] == "buffered"
    orphan = f"env_{enrolled.pk}/trigger/packet_orphan/payload.json"
    (packets_root / orphan).parent.mkdir(parents=True)
    (packets_root / orphan).write_text("{}")  # stored, never recorded (an upload that died half-way)

    report = packets_cleanup(older_than=DAY, now=later())

    assert report.deleted == [unused] and report.orphans == [orphan]
    assert report.referenced == 1 and report.kept_buffered == 1 and report.kept_unsure == 0
    assert set(Packet.objects.values_list("path", flat=True)) == {written, buffered}
    assert Packet.objects.get(path=written).referenced_at is not None
    assert not (packets_root / unused).exists() and not (packets_root / orphan).exists()
    assert not (packets_root / unused).parent.exists()  # its emptied folder went too
    assert (packets_root / written).exists() and (packets_root / buffered).exists()


def test_a_second_run_finds_nothing_and_a_drained_run_keeps_its_packet(api, enrolled, packets_root):
    warm_up(api)
    buffered = upload(api, big_payload(1), filename="trigger/packet_buffered/payload.json")
    run_id = trigger_packet(api, buffered).json()["id"]
    first = packets_cleanup(older_than=DAY, now=later())

    drain()
    second = packets_cleanup(older_than=DAY, now=later())
    third = packets_cleanup(older_than=DAY, now=later())

    assert first.kept_buffered == 1 and first.deleted == []
    assert second.referenced == 1 and second.deleted == []  # now a row names it
    assert (third.deleted, third.orphans, third.referenced, third.kept_buffered) == ([], [], 0, 0)
    assert "payloadPresignedUrl" in api.get(f"/api/v3/runs/{run_id}").json()
    assert (packets_root / buffered).exists()


def test_files_outside_the_environments_folders_are_never_touched(environment, packets_root):
    """A store pointed by mistake at a folder with other things in it."""
    strangers = [packets_root / "README.txt", packets_root / "other" / "data.json", packets_root / "env_x" / "a"]
    for stranger in strangers:
        stranger.parent.mkdir(parents=True, exist_ok=True)
        stranger.write_text("keep me")
        os.utime(stranger, (0, 0))

    report = packets_cleanup(older_than=DAY, now=later())

    assert report.orphans == [] and all(stranger.exists() for stranger in strangers)


def test_nothing_is_removed_within_the_grace_period(api, environment, packets_root):
    path = upload(api, big_payload(1))

    report = packets_cleanup(older_than=DAY, now=timezone.now())

    assert report.deleted == [] and report.orphans == []
    assert (packets_root / path).exists()


def test_the_grace_period_counts_from_the_last_trigger_that_named_a_packet(api, environment):
    """An idempotent repeat names the packet but makes no run: the packet stays for the grace period
    after that trigger, then goes."""
    first = upload(api, big_payload(1), filename="trigger/packet_first/payload.json")
    second = upload(api, big_payload(1), filename="trigger/packet_second/payload.json")
    trigger_packet(api, first, idempotencyKey="k")
    Packet.objects.update(uploaded_at=timezone.now() - 3 * DAY)
    stamped_at = timezone.now()
    assert trigger_packet(api, second, idempotencyKey="k").json()["isCached"] is True

    assert packets_cleanup(older_than=DAY, now=stamped_at + timedelta(hours=12)).deleted == []
    assert packets_cleanup(older_than=DAY, now=stamped_at + 2 * DAY).deleted == [second]
    assert list(TaskRun.objects.values_list("payload", flat=True)) == [first]


def test_packets_are_kept_when_the_buffer_cannot_be_read(api, environment, dead_redis, packets_root):
    path = upload(api, big_payload(1))

    report = packets_cleanup(older_than=DAY, now=later())

    assert report.kept_unsure == 1 and report.deleted == []
    assert (packets_root / path).exists()


def test_a_buffer_backlog_too_long_to_read_keeps_the_environments_packets(api, enrolled):
    upload(api, big_payload(1))
    fill_buffer(enrolled, SCAN_LIMIT + 1)  # a drainer a day behind

    report = packets_cleanup(older_than=DAY, now=later())

    assert report.kept_unsure == 1 and report.deleted == []


def test_a_dry_run_reports_and_removes_nothing(api, environment, packets_root):
    path = upload(api, big_payload(1))

    report = packets_cleanup(older_than=DAY, now=later(), dry_run=True)

    assert report.deleted == [path] and report.deleted_bytes == Packet.objects.get().size
    assert Packet.objects.exists() and (packets_root / path).exists()


def test_the_command_removes_old_unused_packets_and_says_so(api, environment, packets_root, capsys):
    path = upload(api, big_payload(1))
    kept = upload(api, big_payload(1), filename="trigger/packet_kept/payload.json")
    trigger_packet(api, kept)
    two_days_ago = timezone.now() - 2 * DAY
    Packet.objects.update(uploaded_at=two_days_ago, used_at=two_days_ago)
    for name in (path, kept):
        os.utime(packets_root / name, (two_days_ago.timestamp(), two_days_ago.timestamp()))

    call_command("packets_cleanup", "--older-than", "24h", "--dry-run")
    dry = capsys.readouterr().out
    assert f"would remove {path}" in dry and (packets_root / path).exists()
    call_command("packets_cleanup", "--older-than", "24h")
    real = capsys.readouterr().out
    call_command("packets_cleanup")
    again = capsys.readouterr().out

    assert f"removed {path}\n" in real
    assert "removed 1 unused packet (" in real and "1 newly found in use by runs" in real
    assert "removed 0 unused packets" in again and "0 newly found in use by runs" in again
    assert not (packets_root / path).exists() and (packets_root / kept).exists()


def test_the_command_refuses_a_grace_period_under_an_hour():
    with pytest.raises(CommandError, match="at least 1:00:00"):
        call_command("packets_cleanup", "--older-than", "10m")
    with pytest.raises(CommandError):
        call_command("packets_cleanup", "--older-than", "soon")


@pytest.mark.django_db(transaction=True)
def test_concurrent_cleanups_remove_each_packet_once(packets_root):
    from tests.conftest import client_for
    from tests.factories import EnvironmentFactory

    api = client_for(EnvironmentFactory())
    paths = [upload(api, b'{"json":1}', filename=f"trigger/packet_{i}/payload.json") for i in range(40)]
    reports = []
    barrier = threading.Barrier(3)

    def run():
        barrier.wait()
        try:
            reports.append(packets_cleanup(older_than=DAY, now=later()))
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    removed = [path for report in reports for path in report.deleted]
    assert len(reports) == 3 and sorted(removed) == sorted(paths)
    assert sum(report.failed for report in reports) == 0
    assert not Packet.objects.exists()
    assert packet_storage().listdir("") == ([], [])
