"""The one class that talks to S3: where backups live, how objects are streamed up and down, what errors mean.

Layout under s3://<bucket>/<prefix>/:
  logical/<backup id>/<file>.zst[.enc]   the dump's files, each streamed through zstd (and AES-GCM if enabled)
  logical/<backup id>/manifest.json      written last: a backup without a manifest does not exist
  logical/<backup id>/verification.json  the latest verdict of `invoke backup.verify`
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from infra.config import LOCAL_ACCESS_KEY_ID, StackConfig
from infra.errors import UserError
from infra.secrets import Secrets

MIB = 1024 * 1024
# S3 limits (docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html): parts of 5 MiB..5 GiB, 10,000 parts.
MIN_PART_SIZE = 5 * MIB
MAX_PARTS = 10_000

_CODES_MEANING_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken"}


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str


class _HashingReader:
    """Wraps a readable stream, counting and hashing what passes through (the bytes as stored)."""

    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self.size = 0
        self._digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        chunk = self._source.read(size)
        self.size += len(chunk)
        self._digest.update(chunk)
        return chunk

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


class BackupStore:
    def __init__(self, config: StackConfig, client: Any) -> None:
        self.config = config
        s3 = config.backups.s3
        self.bucket = s3.bucket
        self.prefix = s3.prefix.strip("/")
        self.endpoint = config.s3_endpoint_url
        self._client = client
        self._transfer = TransferConfig(
            multipart_threshold=s3.multipart_chunk_mb * MIB,
            multipart_chunksize=max(MIN_PART_SIZE, s3.multipart_chunk_mb * MIB),
            max_concurrency=s3.max_concurrency,
            use_threads=True,
        )

    @classmethod
    def from_config(cls, config: StackConfig, secrets: Secrets | None) -> BackupStore:
        s3 = config.backups.s3
        credentials: dict[str, str] = {}
        # The stack's own endpoint (local and compose targets) has generated keys; Kubernetes has none of its own.
        if config.own_s3_endpoint and secrets is not None:
            credentials = {"aws_access_key_id": LOCAL_ACCESS_KEY_ID, "aws_secret_access_key": secrets.get("s3_local")}
        client = boto3.client(
            "s3",
            endpoint_url=config.s3_endpoint_url,
            region_name=s3.region,
            config=BotoConfig(
                # boto3 >= 1.36 adds checksums that several S3-compatible stores reject; send them only when
                # an operation requires one. Integrity is ours anyway: every object's sha256 is in the manifest.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"max_attempts": 5, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                max_pool_connections=max(10, s3.max_concurrency * 2),
            ),
            **credentials,
        )
        return cls(config, client)

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p)

    # -------------------------------------------------------------- errors

    def _explain(self, exc: Exception, doing: str) -> UserError:
        where = f"{self.location} at {self.endpoint}"
        if isinstance(exc, EndpointConnectionError):
            return UserError(f"cannot reach the S3 endpoint while {doing} ({where})",
                             fix="check backups.s3.endpoint_url and the network; for the local endpoint, invoke status")
        if isinstance(exc, NoCredentialsError):
            return UserError(f"no S3 credentials while {doing}",
                             fix="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, or an instance role")
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            if code in _CODES_MEANING_BAD_CREDENTIALS:
                return UserError(f"S3 refused the credentials while {doing} ({code}, {where})",
                                 fix="check the access key, its secret and the bucket policy")
            if code == "NoSuchBucket":
                return UserError(f"bucket {self.bucket} does not exist ({where})",
                                 fix="create it, or fix backups.s3.bucket")
            return UserError(f"S3 error while {doing}: {code} {exc}", fix="see the S3 error code above")
        return UserError(f"S3 failure while {doing}: {exc}", fix="check the endpoint and retry")

    def _call(self, doing: str, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, method)(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._explain(exc, doing) from None

    # -------------------------------------------------------------- bucket

    def ensure_bucket(self) -> None:
        """Check the bucket is reachable; the local endpoint's bucket is created on first use."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchBucket") and self.config.backups.s3.endpoint_url is None:
                self._call("creating the local bucket", "create_bucket", Bucket=self.bucket)
                return
            if code in ("404", "NoSuchBucket"):
                raise UserError(
                    f"bucket {self.bucket} does not exist at {self.endpoint}",
                    fix="create it (with versioning and a lifecycle rule), or fix backups.s3.bucket",
                ) from None
            raise self._explain(exc, "checking the bucket") from None
        except BotoCoreError as exc:
            raise self._explain(exc, "checking the bucket") from None

    # -------------------------------------------------------------- objects

    def _sse(self) -> dict[str, str]:
        s3 = self.config.backups.s3
        if s3.server_side_encryption == "none" or s3.endpoint_url is None:
            # The local endpoint stores nothing on disk; SSE headers would only be echoed.
            return {}
        args: dict[str, str] = {"ServerSideEncryption": s3.server_side_encryption}
        if s3.server_side_encryption == "aws:kms" and s3.kms_key_id:
            args["SSEKMSKeyId"] = s3.kms_key_id
        return args

    def upload_stream(self, key: str, stream: IO[bytes]) -> StoredObject:
        """Multipart upload of a stream of unknown length; returns the size and sha256 of what was stored."""
        reader = _HashingReader(stream)
        try:
            self._client.upload_fileobj(reader, self.bucket, key, ExtraArgs=self._sse(), Config=self._transfer)
        except (ClientError, BotoCoreError) as exc:
            raise self._explain(exc, f"uploading {key}") from None
        return StoredObject(key, reader.size, reader.sha256)

    def upload_file(self, path: Path, key: str, transfer: TransferConfig | None = None) -> int:
        """Upload a file through boto3's transfer manager (multipart, parallel parts); returns its size.

        ``transfer``: the part size and concurrency; by default the store's own (backups.s3).
        """
        try:
            self._client.upload_file(str(path), self.bucket, key, ExtraArgs=self._sse(),
                                     Config=self._transfer if transfer is None else transfer)
        except S3UploadFailedError as exc:
            # boto3's upload_file wraps the ClientError that says why (its code) in this one.
            cause = exc.__context__
            raise self._explain(cause if isinstance(cause, ClientError) else exc, f"uploading {key}") from None
        except (ClientError, BotoCoreError) as exc:
            raise self._explain(exc, f"uploading {key}") from None
        return path.stat().st_size

    def delete(self, key: str) -> None:
        """Delete one object; deleting a key that does not exist is not an error (S3's own semantics)."""
        self._call(f"deleting {key}", "delete_object", Bucket=self.bucket, Key=key)

    def put_json(self, key: str, document: dict[str, Any]) -> None:
        body = json.dumps(document, indent=2, sort_keys=True).encode()
        self._call(f"writing {key}", "put_object", Bucket=self.bucket, Key=key, Body=body,
                   ContentType="application/json", **self._sse())

    def get_json(self, key: str) -> dict[str, Any] | None:
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._explain(exc, f"reading {key}") from None
        except BotoCoreError as exc:
            raise self._explain(exc, f"reading {key}") from None
        document: dict[str, Any] = json.loads(body)
        return document

    def open_object(self, key: str) -> IO[bytes]:
        """A streaming body; reading it downloads the object."""
        response = self._call(f"downloading {key}", "get_object", Bucket=self.bucket, Key=key)
        body: IO[bytes] = response["Body"]
        return body

    def download_to(self, key: str, handle: IO[bytes]) -> None:
        try:
            self._client.download_fileobj(self.bucket, key, handle, Config=self._transfer)
        except (ClientError, BotoCoreError) as exc:
            raise self._explain(exc, f"downloading {key}") from None

    def list_objects(self, prefix: str) -> Iterator[tuple[str, int, datetime]]:
        """(key, size, last modified) of every object under ``prefix``."""
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield item["Key"], int(item["Size"]), item["LastModified"]
        except (ClientError, BotoCoreError) as exc:
            raise self._explain(exc, f"listing {prefix}") from None

    def list_keys(self, prefix: str) -> Iterator[tuple[str, int]]:
        for key, size, _ in self.list_objects(prefix):
            yield key, size

    def list_prefixes(self, prefix: str) -> list[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        found: list[str] = []
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                found += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        except (ClientError, BotoCoreError) as exc:
            raise self._explain(exc, "listing backups") from None
        return found

    def delete_prefix(self, prefix: str) -> int:
        keys = [k for k, _ in self.list_keys(prefix)]
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": k} for k in keys[start:start + 1000]]
            self._call(f"deleting {prefix}", "delete_objects", Bucket=self.bucket, Delete={"Objects": batch})
        return len(keys)
