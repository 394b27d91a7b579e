"""API routes at the SDK's own paths: no trailing slashes (API.md §10)."""

from django.urls import path, re_path

from runs.api import packets, views

urlpatterns = [
    # Task ids may contain "/" (the SDK percent-encodes it, Django decodes it before routing).
    # (?s:…): any character, newlines included, so no task id falls through to an HTML 404.
    re_path(r"^api/v1/tasks/(?P<task_id>(?s:.+))/trigger$", views.TaskTriggerApi.as_view(), name="task-trigger"),
    path("api/v3/runs/<str:run_id>", views.RunRetrieveApi.as_view(), name="run-retrieve"),
    path("api/v2/runs/<str:run_id>/cancel", views.RunCancelApi.as_view(), name="run-cancel"),
    path("api/v1/runs", views.RunListApi.as_view(), name="run-list"),
    path("api/v1/runs/<str:run_id>/tags", views.RunTagsApi.as_view(), name="run-tags"),
    path("api/v1/runs/<str:run_id>/metadata", views.RunMetadataApi.as_view(), name="run-metadata"),
    path("api/v1/runs/<str:run_id>/reschedule", views.RunRescheduleApi.as_view(), name="run-reschedule"),
    path("api/v1/runs/<str:run_id>/replay", views.RunReplayApi.as_view(), name="run-replay"),
    path("api/v1/projects/<str:project_ref>/runs", views.ProjectRunListApi.as_view(), name="project-run-list"),
    re_path(
        r"^api/v1/idempotencyKeys/(?P<key>(?s:.+))/reset$",
        views.IdempotencyKeyResetApi.as_view(),
        name="idempotency-key-reset",
    ),
    path("api/v3/batches", views.BatchCreateApi.as_view(), name="batch-create"),
    path("api/v3/batches/<str:batch_id>/items", views.BatchItemsApi.as_view(), name="batch-items"),
    path("api/v2/batches/<str:batch_id>", views.BatchRetrieveApi.as_view(), name="batch-retrieve"),
    # Packets (large payloads): the SDK percent-encodes the "/" of its filenames; Django decodes them.
    re_path(r"^api/v2/packets/(?P<filename>(?s:.+))$", packets.PacketUploadUrlApi.as_view(), name="packet-upload-url"),
    re_path(r"^api/v1/packets/(?P<path>(?s:.+))$", packets.PacketDownloadUrlApi.as_view(), name="packet-download-url"),
    path("api/v1/runs/<str:run_id>/packets/<str:field>", packets.RunPacketUrlApi.as_view(), name="run-packet-url"),
    re_path(r"^api/packet-store/(?P<path>(?s:.+))$", packets.PacketObjectApi.as_view(), name="packet-object"),
]
