"""Presigned packet URLs as the API hands them out: absolute, since the SDK fetches them as they are."""

from django.utils import timezone

from runs import conf
from runs.models import TaskRun
from runs.services.packets import packet_url, run_packet_path


def absolute(request, url: str) -> str:
    """``url`` (a path and query) on PACKETS_PUBLIC_URL, else on the host the request came to."""
    base = conf.packet_public_url()
    return f"{base}{url}" if base else request.build_absolute_uri(url)


def download_url(request, path: str) -> str:
    return absolute(request, packet_url(method="GET", path=path, now=timezone.now()))


def payload_url(request, run: TaskRun) -> str | None:
    """A fresh download URL for a run whose payload is a packet (retrieve's ``payloadPresignedUrl``),
    wherever the run lives; None for any other run."""
    path = run_packet_path(run)
    return download_url(request, path) if path else None
