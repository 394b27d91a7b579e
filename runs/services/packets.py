"""Large payloads: the SDK's packet offload (API.md §1), stored through Django's storage API.

The SDK offloads any payload of 128 KiB or more. It asks for an upload URL
(``PUT /api/v2/packets/{filename}`` → ``{presignedUrl, storagePath}``), PUTs the bytes there, then
triggers with ``payloadType: "application/store"`` and the storage path as the payload. Retrieve
answers ``payloadPresignedUrl`` for such a run, and the SDK downloads it itself.

- **Paths** are ``env_<id>/<filename>``. The environment's prefix is what keeps tenants apart, so a
  path is held to a strict alphabet (segments of letters, digits, ``_ - .`` joined by ``/``, none
  empty or starting with a dot): ``..``, absolute paths, backslashes, NUL and leftover
  percent-encodings (``%2e%2e``) are refused before any storage backend sees them.
- **URLs** are ours: an HMAC (django.core.signing: keyed by SECRET_KEY, and SECRET_KEY_FALLBACKS
  still verify after a rotation) over the method, the path and the expiry. runs.api.packets serves
  them through ``storages["packets"]``, whichever backend that is. They need no secret key, and
  nothing else opens a packet without one.
- **Rows**: a Packet per stored object, written once the storage holds the bytes, so a trigger
  checks one indexed row, not the store. Triggers stamp ``used_at``, from which the cleanup's grace
  period counts (runs.services.packet_cleanup).
"""

import logging
import re
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from datetime import datetime
from typing import IO
from urllib.parse import urlencode

from django.core import signing
from django.core.exceptions import ImproperlyConfigured
from django.core.files import File
from django.core.files.storage import Storage, storages
from django.db import transaction
from django.urls import reverse

from runs import conf
from runs.exceptions import (
    InvalidRequest,
    PacketAccessDenied,
    PacketInUse,
    PacketNotFound,
    ServiceUnavailable,
    TooLarge,
    Unprocessable,
)
from runs.models import Packet, RuntimeEnvironment, TaskRun

try:  # the S3 store's failures (PACKETS_BACKEND=s3, an optional extra): botocore's, and the transfers'
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError
    from s3transfer.exceptions import RetriesExceededError

    _STORE_FAILURES: tuple[type[Exception], ...] = (
        OSError,
        BotoCoreError,
        ClientError,
        Boto3Error,
        RetriesExceededError,
    )
except ImportError:
    _STORE_FAILURES = (OSError,)

logger = logging.getLogger(__name__)

PACKET_TYPE = "application/store"
STORAGE_ALIAS = "packets"
MAX_FILENAME_LENGTH = 500  # the SDK's are ~50 characters (trigger/packet_<id>/payload.json)
MAX_PATH_LENGTH = 600  # Packet.path: the environment's prefix and the filename
MAX_SEGMENTS = 16
DEFAULT_CONTENT_TYPE = "application/octet-stream"
RUN_FIELDS = ("payload", "output")  # what GET /api/v1/runs/{id}/packets/{field} may name

SEGMENT_PATTERN = r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}"  # one segment of a path; segments are joined by "/"

_SEGMENT = re.compile(SEGMENT_PATTERN)
_PREFIX = re.compile(r"env_([0-9]{1,18})/")
_EXPIRES = re.compile(r"[0-9]{1,12}")
_CONTENT_TYPE = re.compile(r"[\x20-\x7e]{1,128}")
_SALT = "runs.packets.url"
_CHUNK = 64 * 1024
_SPOOL_BYTES = 1024 * 1024  # an upload up to this size stays in memory on its way to the store


def packet_storage() -> Storage:
    return storages[STORAGE_ALIAS]


@contextmanager
def _store_answers():
    """A store that fails (a full disk; an object store that refuses, errs or does not answer within
    PACKETS_S3_TIMEOUT_SECONDS) is a 503, which the SDK retries, not a 500. A missing object stays
    FileNotFoundError."""
    try:
        yield
    except FileNotFoundError:
        raise
    except _STORE_FAILURES as error:
        logger.warning("runs.packets.store_unavailable error=%s", str(error)[:300])
        raise ServiceUnavailable("The packet store could not be reached; retry shortly") from error


def packet_prefix(environment_id: int) -> str:
    return f"env_{environment_id}/"


def _check_syntax(path: object, *, what: str, max_length: int = MAX_PATH_LENGTH) -> str:
    if not isinstance(path, str) or not path or len(path) > max_length:
        raise InvalidRequest(f"Invalid packet {what}: 1 to {max_length} characters.")
    segments = path.split("/")
    if len(segments) > MAX_SEGMENTS or not all(_SEGMENT.fullmatch(segment) for segment in segments):
        raise InvalidRequest(
            f"Invalid packet {what}: up to {MAX_SEGMENTS} segments joined by '/', each of letters, digits, "
            "'_', '-' and '.', and none starting with '.'."
        )
    return path


def packet_path_for(*, environment: RuntimeEnvironment, filename: str) -> str:
    """The storage path of the SDK's ``filename`` in ``environment``; InvalidRequest for a bad name."""
    return packet_prefix(environment.pk) + _check_syntax(filename, what="filename", max_length=MAX_FILENAME_LENGTH)


def packet_path_check(*, environment_id: int, path: object) -> str:
    """``path`` if it is a well-formed storage path inside the environment's prefix, else InvalidRequest."""
    checked = _check_syntax(path, what="path")
    prefix = packet_prefix(environment_id)
    if not checked.startswith(prefix):
        raise InvalidRequest(f"Packet path {checked!r} is not in this environment: its packets are under {prefix}")
    return checked


def _environment_id(path: str) -> int:
    if (match := _PREFIX.match(path)) is None:
        raise PacketNotFound("Packet not found")
    return int(match.group(1))


# -- presigned URLs ---------------------------------------------------------------------------


def _message(method: str, path: str, expires: int) -> str:
    # A space cannot occur in a path, so the three fields cannot be run together differently.
    return f"{method} {path} {expires}"


def _signer() -> signing.Signer:
    return signing.Signer(salt=_SALT)


def packet_url(*, method: str, path: str, now: datetime) -> str:
    """A presigned URL (path and query, no host) letting anyone ``method`` (GET or PUT) ``path`` for
    PACKETS_URL_TTL_SECONDS."""
    expires = int(now.timestamp()) + conf.packet_url_ttl_seconds()
    signature = _signer().sign(_message(method, path, expires)).rpartition(":")[2]
    query = urlencode({"expires": expires, "signature": signature})
    return f"{reverse('packet-object', kwargs={'path': path})}?{query}"


def packet_url_verify(*, method: str, path: str, expires: str | None, signature: str | None, now: datetime) -> None:
    """PacketAccessDenied unless ``signature`` is ours for this method, path and expiry, and the
    expiry has not passed. Checked before anything is read or written."""
    if not expires or not signature or not _EXPIRES.fullmatch(expires):
        raise PacketAccessDenied("This packet URL is not signed: ask the API for a presigned URL")
    try:
        _signer().unsign(f"{_message(method, path, int(expires))}:{signature}")
    except signing.BadSignature:
        raise PacketAccessDenied("The packet URL's signature does not match") from None
    if now.timestamp() > int(expires):
        raise PacketAccessDenied("The packet URL has expired: ask the API for a new one")


# -- the SDK's calls ----------------------------------------------------------------------------


def packet_upload_url(*, environment: RuntimeEnvironment, filename: str, now: datetime) -> tuple[str, str]:
    """(storage path, presigned PUT URL) for the SDK's ``filename``. PacketInUse once a trigger has
    named that path: a run's payload never changes under it."""
    path = packet_path_for(environment=environment, filename=filename)
    if Packet.objects.filter(path=path, used_at__isnull=False).exists():
        raise PacketInUse(f"A trigger already named packet {path}: upload under a new name")
    return path, packet_url(method="PUT", path=path, now=now)


def packet_download_url(*, environment: RuntimeEnvironment, path: str, now: datetime) -> str:
    """A presigned GET URL for a packet of ``environment``. PacketNotFound for another environment's
    path, as for a path never uploaded; InvalidRequest for a malformed one."""
    _check_syntax(path, what="path")
    if not path.startswith(packet_prefix(environment.pk)):
        raise PacketNotFound("Packet not found")
    if not Packet.objects.filter(environment=environment, path=path).exists():
        raise PacketNotFound("Packet not found")
    return packet_url(method="GET", path=path, now=now)


def run_packet_path(run: TaskRun, field: str = "payload") -> str | None:
    """The storage path of a run's offloaded ``field``, or None. Runs keep no output here, and a
    payload path outside the run's own environment is never honoured."""
    if field != "payload" or run.payload_type != PACKET_TYPE:
        return None
    try:
        return packet_path_check(environment_id=run.environment_id, path=run.payload)
    except InvalidRequest:
        return None


# -- the presigned URLs' own calls ---------------------------------------------------------------


def _content_type(value: str | None) -> str:
    if not value:
        return DEFAULT_CONTENT_TYPE
    if not _CONTENT_TYPE.fullmatch(value):
        raise InvalidRequest("Content-Type must be 1 to 128 printable characters")
    return value  # verbatim: the SDK parses the download by exactly what it sent


def _copy_bounded(source: IO[bytes], target: IO[bytes], limit: int) -> int:
    size = 0
    while chunk := source.read(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"Packet is larger than {limit} bytes (PACKETS_MAX_BYTES)")
        target.write(chunk)
    return size


def packet_store(
    *, path: str, body: IO[bytes], content_length: int | None, content_type: str | None, now: datetime
) -> Packet:
    """Store an upload at ``path``, whose presigned URL was verified. TooLarge past PACKETS_MAX_BYTES:
    at once when the declared length says so, else while streaming (never read whole into memory).
    PacketInUse once a trigger has named the path. A retried upload before that replaces the bytes."""
    _check_syntax(path, what="path")
    environment_id = _environment_id(path)
    content_type = _content_type(content_type)
    limit = conf.packet_max_bytes()
    if content_length is not None and content_length > limit:
        raise TooLarge(f"Packet is larger than {limit} bytes (PACKETS_MAX_BYTES)")
    if not RuntimeEnvironment.objects.filter(pk=environment_id).exists():
        raise PacketNotFound("Packet not found")
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as spool:
        size = _copy_bounded(body, spool, limit)
        spool.seek(0)
        # The row lock orders this upload with a trigger naming the path: the trigger's stamp waits,
        # then sees the new bytes; an upload after the stamp is refused.
        with transaction.atomic():
            existing = Packet.objects.select_for_update().filter(path=path).first()
            if existing is not None and existing.used_at is not None:
                raise PacketInUse(f"A trigger already named packet {path}: upload under a new name")
            upload = File(spool, name=path)
            upload.content_type = content_type  # type: ignore[attr-defined]  # object stores (S3) keep it on the object too
            storage = packet_storage()
            with _store_answers():
                stored = storage.save(path, upload)
            if stored != path:
                storage.delete(stored)
                raise ImproperlyConfigured(
                    "The packets storage renamed an upload instead of replacing it: enable allow_overwrite "
                    "(FileSystemStorage) or file_overwrite (S3Storage)."
                )
            packet, _ = Packet.objects.update_or_create(
                path=path,
                defaults={
                    "environment_id": environment_id,
                    "content_type": content_type,
                    "size": size,
                    "uploaded_at": now,
                },
            )
    return packet


def packet_open(*, path: str) -> tuple[Packet, IO[bytes]]:
    """The packet at ``path`` and its bytes, open for reading; PacketNotFound when either is gone."""
    packet = Packet.objects.filter(path=path).first()
    if packet is None:
        raise PacketNotFound("Packet not found")
    try:
        with _store_answers():
            content = packet_storage().open(path, "rb")
            # An object store fetches the bytes on first read, which would be while the answer
            # streams: fetched now, a store that fails is a 503, not a body cut short.
            content.file  # noqa: B018
    except FileNotFoundError:
        raise PacketNotFound("Packet not found") from None
    return packet, content


# -- triggers ------------------------------------------------------------------------------------


def packets_use(*, environment: RuntimeEnvironment, paths: Iterable[object], now: datetime) -> None:
    """Check that each path names a packet uploaded to ``environment``, and stamp them used.

    InvalidRequest for a malformed path or one outside the environment's prefix; Unprocessable for a
    packet never uploaded (or cleaned up). Runs before a trigger writes anything; the stamp restarts
    the cleanup's grace period, so a packet a run is about to name is not removed under it.
    """
    wanted: set[str] = set()
    for path in paths:
        if not isinstance(path, str):
            raise InvalidRequest(
                f"payload: with payloadType {PACKET_TYPE}, the payload is the storagePath of an uploaded packet"
            )
        wanted.add(packet_path_check(environment_id=environment.pk, path=path))
    if not wanted:
        return
    stamped = Packet.objects.filter(environment=environment, path__in=wanted).update(used_at=now)
    if stamped < len(wanted):
        found = set(Packet.objects.filter(environment=environment, path__in=wanted).values_list("path", flat=True))
        missing = sorted(wanted - found)
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise Unprocessable(
            f"Packet not found: {missing[0]}{more}. Upload it through PUT /api/v2/packets/… before triggering."
        )
