"""The dashboard's figures say what they measure (issue 14: "drained per minute" is an average)."""

import pytest
from django.contrib.auth.models import User
from django.test import Client

pytestmark = pytest.mark.django_db


def test_the_drain_rate_card_says_it_is_a_five_minute_average_and_the_charts_count_per_minute():
    client = Client()
    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))

    page = client.get("/admin/mollifier/dashboard/").content.decode()

    assert "drained per minute (5-minute average)<strong>" in page
    assert "<h2>Rows drained, last hour (per minute)</h2>" in page
    assert "<h2>Gate decisions, last hour (per minute)</h2>" in page
