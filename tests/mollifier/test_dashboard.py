"""The dashboard's figures say what they measure (issue 14: "drained per minute" is an average)."""

import pytest
from django.contrib.auth.models import User
from django.test import Client

from mollifier import keys, stats
from mollifier.client import get as redis_client
from mollifier.directory import get_directory
from tests.conftest import enroll

pytestmark = pytest.mark.django_db


def test_the_drain_rate_card_says_it_is_a_five_minute_average_and_the_charts_count_per_minute():
    client = Client()
    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))

    page = client.get("/admin/mollifier/dashboard/").content.decode()

    assert "drained per minute (5-minute average)<strong>" in page
    assert "<h2>Rows drained, last hour (per minute)</h2>" in page
    assert "<h2>Gate decisions, last hour (per minute)</h2>" in page


def test_the_five_minute_average_counts_the_current_minute_as_far_as_it_has_gone(environment):
    """A steady 100 rows a minute, half-way through a minute: 100, not 90 (450 rows over 5 minutes)."""
    enroll(environment)  # the dashboard charts enrolled organisations
    org = str(environment.organization_id)
    minute = 29_000_000  # an epoch minute; now is half-way through it
    for epoch_minute, drained in zip(range(minute - 4, minute + 1), [100, 100, 100, 100, 50]):
        redis_client().hset(keys.minute(org, epoch_minute), "drained", drained)

    board = stats.dashboard(now_ms=minute * 60_000 + 30_000, directory=get_directory())

    assert board.drained_per_minute == 100
