"""Packet endpoints: the SDK's upload and download handshakes, and the presigned URLs they hand out.

The handshakes authenticate with the environment's secret key like every other call. The presigned
URLs (``/api/packet-store/{path}?expires=…&signature=…``) carry their own authority, as an object
store's do: they are left out of the OpenAPI description, being capabilities minted by this
service rather than calls a client composes. runs.services.packets decides everything.
"""

import io
from typing import IO

from django.http import FileResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import permissions, serializers
from rest_framework.exceptions import ParseError, ValidationError
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.response import Response
from rest_framework.views import APIView

from runs.api import presigned
from runs.api.schema import ErrorSchema, responses
from runs.api.views import EnvironmentApi
from runs.exceptions import PacketNotFound
from runs.selectors import task_run_get
from runs.services.packets import (
    MAX_FILENAME_LENGTH,
    MAX_PATH_LENGTH,
    MAX_SEGMENTS,
    RUN_FIELDS,
    SEGMENT_PATTERN,
    packet_download_url,
    packet_open,
    packet_store,
    packet_upload_url,
    packet_url_verify,
    run_packet_path,
)


class PacketUploadUrlSchema(serializers.Serializer):
    presignedUrl = serializers.CharField(help_text="PUT the packet's bytes here, with its content type; no key needed.")
    storagePath = serializers.CharField(
        help_text='Trigger with this as the payload and payloadType "application/store".'
    )


class PacketUrlSchema(serializers.Serializer):
    presignedUrl = serializers.CharField(help_text="GET the packet's bytes here (served with its content type).")


_IN_USE = OpenApiResponse(ErrorSchema, description="A trigger already named this packet: upload under a new name")
_NAME = f"{SEGMENT_PATTERN}(/{SEGMENT_PATTERN}){{0,{MAX_SEGMENTS - 1}}}"
_FILENAME = OpenApiParameter(
    "filename",
    {"type": "string", "pattern": f"^{_NAME}$", "maxLength": MAX_FILENAME_LENGTH},
    OpenApiParameter.PATH,
    description="The SDK's name for the packet, e.g. trigger/packet_…/payload.json (its '/' may be percent-encoded)",
)
_PATH = OpenApiParameter(
    "path",
    {"type": "string", "pattern": f"^env_[0-9]+/{_NAME}$", "maxLength": MAX_PATH_LENGTH},
    OpenApiParameter.PATH,
    description="A storage path, as the upload handshake answered it: env_<id>/<filename>",
)


class PacketUploadUrlApi(EnvironmentApi):
    @extend_schema(
        operation_id="create_packet_upload_url",
        summary="Presign a packet upload",
        description=(
            "The SDK's offload of a payload of 128 KiB or more, step 1: a presigned PUT URL for `filename` "
            "(e.g. `trigger/packet_…/payload.json`) in this environment, and the storage path to trigger with."
        ),
        request=None,
        parameters=[_FILENAME],
        responses={**responses(200, PacketUploadUrlSchema), 409: _IN_USE},
    )
    def put(self, request, filename: str):
        path, url = packet_upload_url(environment=self.environment, filename=filename, now=timezone.now())
        return Response({"presignedUrl": presigned.absolute(request, url), "storagePath": path})


class PacketDownloadUrlApi(EnvironmentApi):
    @extend_schema(
        operation_id="create_packet_download_url",
        summary="Presign a packet download",
        description="A presigned GET URL for a packet of this environment, named by its storage path.",
        parameters=[_PATH],
        responses=responses(200, PacketUrlSchema, 404),
    )
    def get(self, request, path: str):
        url = packet_download_url(environment=self.environment, path=path, now=timezone.now())
        return Response({"presignedUrl": presigned.absolute(request, url)})


class RunPacketUrlApi(EnvironmentApi):
    @extend_schema(
        operation_id="create_run_packet_url",
        summary="Presign a run's stored payload",
        description=(
            "A presigned GET URL for a run's offloaded payload, the run found wherever it lives. 404 when the "
            "run has none (runs keep no output here): the SDK then falls back to GET /api/v1/packets/{path}."
        ),
        parameters=[OpenApiParameter("field", OpenApiTypes.STR, OpenApiParameter.PATH, enum=list(RUN_FIELDS))],
        responses=responses(200, PacketUrlSchema, 404),
    )
    def get(self, request, run_id: str, field: str):
        if field not in RUN_FIELDS:
            raise ValidationError({"field": f"Must be one of {', '.join(RUN_FIELDS)}."})
        run = task_run_get(environment=self.environment, run_id=run_id)
        if (path := run_packet_path(run, field)) is None:
            raise PacketNotFound(f"The run has no stored {field}")
        return Response({"presignedUrl": presigned.download_url(request, path)})


def _upload_body(request) -> tuple[IO[bytes], int | None]:
    meta = request.META
    if not meta.get("CONTENT_LENGTH") and meta.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
        return meta["wsgi.input"], None  # gunicorn de-chunks into wsgi.input; Django sees no body (API.md §10)
    try:
        length = int(meta.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise ParseError("Invalid Content-Length") from None
    return (request.stream or io.BytesIO()), length


class _AnyAccept(BaseContentNegotiation):
    """A presigned URL answers whatever the client says it accepts, as an object store does; its body
    is read raw, never parsed."""

    def select_parser(self, request, parsers):
        return None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class PacketObjectApi(APIView):
    """A presigned URL: the signature is the authority, no secret key is read."""

    authentication_classes = ()
    permission_classes = (permissions.AllowAny,)
    content_negotiation_class = _AnyAccept

    def _verify(self, method: str, path: str) -> None:
        params = self.request.query_params
        packet_url_verify(
            method=method,
            path=path,
            expires=params.get("expires"),
            signature=params.get("signature"),
            now=timezone.now(),
        )

    @extend_schema(exclude=True)
    def get(self, request, path: str):
        self._verify("GET", path)
        packet, content = packet_open(path=path)
        response = FileResponse(
            content, content_type=packet.content_type, as_attachment=True, filename=path.rpartition("/")[2]
        )
        # The content type is the uploader's: a browser opening the link must not run it on this origin
        # (the admin lives here). The SDK reads the body and the content type, and ignores these.
        response["Content-Security-Policy"] = "default-src 'none'; sandbox"
        return response

    @extend_schema(exclude=True)
    def put(self, request, path: str):
        self._verify("PUT", path)
        body, length = _upload_body(request)
        packet = packet_store(
            path=path,
            body=body,
            content_length=length,
            content_type=request.META.get("CONTENT_TYPE"),
            now=timezone.now(),
        )
        return Response({"storagePath": packet.path, "size": packet.size})
