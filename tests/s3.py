"""A real S3 API on loopback (moto's server) for the S3 packet store: no network, nothing mocked."""

import uuid
from contextlib import contextmanager

import boto3
from moto.server import ThreadedMotoServer

from tests.server import free_port
from trigger_project.settings import PACKETS, packets_s3_waits

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key"
REGION = "us-east-1"


@contextmanager
def s3_server():
    """Serve S3 on a free loopback port; yields the endpoint URL."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def client(endpoint: str):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


def new_bucket(endpoint: str) -> str:
    name = f"packets-{uuid.uuid4().hex[:12]}"
    client(endpoint).create_bucket(Bucket=name)
    return name


def storage_settings(endpoint: str, bucket: str, prefix: str = "", timeout_s: float = 5) -> dict:
    """STORAGES["packets"] as settings.py builds it for PACKETS_BACKEND=s3."""
    return {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": bucket,
            "location": prefix,
            "endpoint_url": endpoint,
            "region_name": REGION,
            "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY,
            "addressing_style": "path",
            "file_overwrite": True,
            **packets_s3_waits(timeout_s, PACKETS["MAX_BYTES"]),
        },
    }


def server_env(endpoint: str, bucket: str, prefix: str = "") -> dict:
    """The same, as the environment variables of a server process."""
    return {
        "PACKETS_BACKEND": "s3",
        "PACKETS_S3_BUCKET": bucket,
        "PACKETS_S3_PREFIX": prefix,
        "PACKETS_S3_ENDPOINT_URL": endpoint,
        "PACKETS_S3_REGION": REGION,
        "PACKETS_S3_ACCESS_KEY_ID": ACCESS_KEY,
        "PACKETS_S3_SECRET_ACCESS_KEY": SECRET_KEY,
        "PACKETS_S3_ADDRESSING_STYLE": "path",
    }


def keys(endpoint: str, bucket: str) -> list[str]:
    listing = client(endpoint).list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))
