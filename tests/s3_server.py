"""A real S3-compatible server on loopback: moto's server mode (its HTTP API, not a mocked
client), for the bucket-upload tests."""

from __future__ import annotations

import os

import boto3
from moto.server import ThreadedMotoServer

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key-never-in-errors"


def isolate_boto3(environ: os._Environ | dict) -> None:
    """No instance-metadata lookups, no user config: boto3 talks to the loopback server only."""
    environ["AWS_EC2_METADATA_DISABLED"] = "true"
    environ["AWS_CONFIG_FILE"] = os.devnull
    environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        environ.pop(var, None)


class S3Server:
    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        assert host == "127.0.0.1"
        self.url = f"http://127.0.0.1:{port}"

    def client(self):
        return boto3.session.Session().client(
            "s3", endpoint_url=self.url, region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def keys(self, bucket: str) -> list[str]:
        listing = self.client().list_objects_v2(Bucket=bucket)
        return sorted(o["Key"] for o in listing.get("Contents", []))

    def env(self, bucket_path: str) -> dict[str, str]:
        """runpod's BUCKET_* variables for https://HOST/BUCKET[/PREFIX] on this server."""
        return {"BUCKET_ENDPOINT_URL": f"{self.url}/{bucket_path}",
                "BUCKET_ACCESS_KEY_ID": ACCESS_KEY, "BUCKET_SECRET_ACCESS_KEY": SECRET_KEY}

    def close(self) -> None:
        self._server.stop()
