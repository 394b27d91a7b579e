"""The OpenAPI description says what each operation does (issue 14: 11 of 14 operations carried the
base view's docstring, and none had a summary)."""

import inspect

import pytest
from rest_framework.test import APIClient

from runs.api import views

pytestmark = pytest.mark.django_db

METHODS = {"get", "put", "post", "patch", "delete"}


@pytest.fixture
def operations() -> dict[str, dict]:
    schema = APIClient().get("/api/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    return {
        f"{method.upper()} {path}": operation
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    }


def test_every_operation_has_a_summary_and_a_description_of_its_own(operations):
    base = inspect.cleandoc(views.EnvironmentApi.__doc__ or "")
    assert len(operations) >= 17  # the SDK's 14 run and batch calls and the 3 packet handshakes

    for name, operation in operations.items():
        summary, description = operation.get("summary", ""), operation.get("description", "")
        assert summary.strip(), f"{name} has no summary"
        assert description.strip(), f"{name} has no description"
        assert description.strip() != base and "Base:" not in description, f"{name} shows the base view's docstring"

    descriptions = [operation["description"] for operation in operations.values()]
    summaries = [operation["summary"] for operation in operations.values()]
    assert len(set(descriptions)) == len(descriptions), "two operations share a description"
    assert len(set(summaries)) == len(summaries), "two operations share a summary"
