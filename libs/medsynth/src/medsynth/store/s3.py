"""The S3 backend, over the ``minio`` client (works with MinIO, AWS S3 and other S3-API servers).

Atomicity comes from S3 itself: an object becomes visible only when its upload (single PUT or
CompleteMultipartUpload) finishes, and a GET streams the one version it started on.

Each object's SHA-256 is kept in its user metadata (``x-amz-meta-sha256``), so :meth:`S3Store.stat`
is a single HEAD request.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import IO, Any, BinaryIO
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.error import MinioException, S3Error
from minio.helpers import check_bucket_name

from medsynth.core.errors import InvalidInput, MedsynthError, NotFound, StoreError, TooLarge
from medsynth.store.base import CHUNK, ObjectInfo, ObjectStore, check_key, check_prefix

PART_SIZE = 8 * 1024 * 1024
MAX_SINGLE_PUT = 5 * 1024**3
SHA_HEADER = "x-amz-meta-sha256"
_CONFLICT_RETRIES = 5


class S3Store(ObjectStore):
    """Objects in one bucket of an S3-API server; see the module docstring."""

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        access_key: str,
        secret_key: str,
        *,
        secure: bool = False,
        region: str = "us-east-1",
        ca_bundle: str | os.PathLike[str] | None = None,
    ) -> None:
        """``ca_bundle``: a PEM file of the CAs to trust for the server's certificate (an internal CA) instead
        of the public ones (``SSL_CERT_FILE``, else certifi's); https only."""
        self.endpoint, self.secure = _split_endpoint(endpoint, secure)
        if ca_bundle is not None and not self.secure:
            raise InvalidInput(f"an S3 CA bundle ({ca_bundle}) is for https; the endpoint {endpoint!r} is reached over http.")
        self.bucket = bucket
        try:
            check_bucket_name(bucket, strict=True)
        except ValueError:
            raise InvalidInput(f"invalid S3 bucket name {bucket!r}.") from None
        try:
            self._client = Minio(
                self.endpoint,
                access_key=access_key,
                secret_key=secret_key,
                secure=self.secure,
                region=region,
                http_client=_http_client(ca_bundle),
            )
        except ValueError as exc:
            raise InvalidInput(f"invalid S3 endpoint {endpoint!r}: {exc}") from None

    def __repr__(self) -> str:
        scheme = "https" if self.secure else "http"
        return f"S3Store({scheme}://{self.endpoint}/{self.bucket})"

    def ensure_bucket(self) -> S3Store:
        """Create the bucket if it does not exist yet; return ``self``."""
        with self._errors("create bucket", None):
            if not self._client.bucket_exists(self.bucket):
                try:
                    self._client.make_bucket(self.bucket)
                except S3Error as exc:
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
        return self

    # Writes --------------------------------------------------------------------------------------

    def put_stream(self, key: str, stream: BinaryIO, *, content_type: str = "application/octet-stream") -> ObjectInfo:
        """Spool, then upload.

        The hash must travel as metadata of the upload request (PutObject or CreateMultipartUpload),
        i.e. before the first byte is sent, and S3 cannot attach it afterwards without rewriting the
        object (a server-side copy, which would first publish the object without its hash). So the
        stream is copied once into a :class:`~tempfile.SpooledTemporaryFile` (memory up to one part,
        8 MiB, then a local temp file) while it is hashed, and then uploaded with its hash and exact
        length: one PUT up to 8 MiB, a multipart upload of 8 MiB parts above, which the server makes
        visible only when it completes. The cost is one local copy of large objects.
        """
        check_key(key)
        spool, sha, size = _spool(stream)
        with spool, self._errors("upload", key):
            result = self._client.put_object(
                self.bucket,
                key,
                spool,
                length=size,
                content_type=content_type,
                metadata={"sha256": sha},
                part_size=PART_SIZE,
            )
        return ObjectInfo(key=key, size=size, sha256=sha, modified=_response_time(result.http_headers))

    def put_if_absent(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> bool:
        """One PutObject with ``If-None-Match: *``: the server refuses it with 412 PreconditionFailed
        when the key exists, atomically. On 409 ConditionalRequestConflict (a concurrent write to the
        same key was in flight) the request is retried.

        minio-py's public ``put_object`` turns every unknown header into user metadata
        (``x-amz-meta-if-none-match``), so this calls its internal ``_put_object``, which sends
        headers as given.
        """
        check_key(key)
        if len(data) > MAX_SINGLE_PUT:
            raise TooLarge(f"put_if_absent of {key!r}: {len(data)} bytes exceeds one PUT ({MAX_SINGLE_PUT}).")
        sha = hashlib.sha256(data).hexdigest()
        for attempt in range(_CONFLICT_RETRIES):
            headers = {"If-None-Match": "*", "Content-Type": content_type, SHA_HEADER: sha}
            try:
                self._client._put_object(self.bucket, key, data, headers)
                return True
            except S3Error as exc:
                if exc.code == "PreconditionFailed":
                    return False
                if exc.code != "ConditionalRequestConflict" or attempt == _CONFLICT_RETRIES - 1:
                    raise self._translate(exc, "create", key) from exc
            except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
                raise self._translate(exc, "create", key) from exc
            time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    def delete(self, key: str) -> None:
        check_key(key)
        with self._errors("delete", key):
            self._client.remove_object(self.bucket, key)

    # Reads ---------------------------------------------------------------------------------------

    def open(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """Start the GET now (so a missing key raises here) and stream the body inside ``with``."""
        check_key(key)
        with self._errors("read", key):
            response = self._client.get_object(self.bucket, key)
        return self._reading(key, response)

    def stat(self, key: str) -> ObjectInfo:
        """One HEAD. An object written by another tool has no hash in its metadata; then it is
        hashed by reading it (pinned to the stat'ed version with ``If-Match``), not stored."""
        check_key(key)
        for _ in range(3):
            with self._errors("stat", key):
                obj = self._client.stat_object(self.bucket, key)
            sha = obj.metadata.get(SHA_HEADER) if obj.metadata else None
            if sha is None:
                sha = self._hash_version(key, obj.etag)
            if sha is not None:
                return ObjectInfo(key=key, size=int(obj.size or 0), sha256=sha, modified=_aware(obj.last_modified))
        raise StoreError(f"stat of {key!r} at {self.endpoint}: the object kept changing while it was hashed.")

    def list(self, prefix: str = "") -> Iterator[str]:
        check_prefix(prefix)
        with self._errors("list", prefix):
            names = [
                o.object_name
                for o in self._client.list_objects(self.bucket, prefix=prefix or None, recursive=True)
                if o.object_name and not o.object_name.endswith("/")
            ]
        return iter(sorted(names))

    # Helpers -------------------------------------------------------------------------------------

    def _hash_version(self, key: str, etag: str | None) -> str | None:
        """SHA-256 of the version with ``etag``; ``None`` if it was replaced meanwhile."""
        headers = {"If-Match": f'"{etag}"'} if etag else None
        try:
            with self._errors("read", key):
                response = self._client.get_object(self.bucket, key, request_headers=headers)
        except StoreError as exc:
            if isinstance(exc.__cause__, S3Error) and exc.__cause__.code == "PreconditionFailed":
                return None
            raise
        digest = hashlib.sha256()
        with self._reading(key, response) as body:
            while chunk := body.read(CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    @contextlib.contextmanager
    def _reading(self, key: str, response: Any) -> Iterator[BinaryIO]:
        try:
            yield response
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._translate(exc, "read", key) from exc
        finally:
            response.close()
            response.release_conn()

    @contextlib.contextmanager
    def _errors(self, action: str, key: str | None) -> Iterator[None]:
        """Translate minio/urllib3 failures into medsynth errors."""
        try:
            yield
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._translate(exc, action, key) from exc

    def _translate(self, exc: Exception, action: str, key: str | None) -> MedsynthError:
        what = f"{action} {key!r}" if key is not None else action
        if isinstance(exc, S3Error):
            if exc.code in ("NoSuchKey", "ResourceNotFound"):
                return NotFound(f"no object at key {key!r} in the store.")
            if exc.code == "NoSuchBucket":
                return StoreError(f"{what}: bucket {self.bucket!r} does not exist at S3 endpoint {self.endpoint}.")
            return StoreError(f"{what} failed at S3 endpoint {self.endpoint} (bucket {self.bucket!r}): {exc.code}: {exc.message}")
        return StoreError(f"{what} failed: S3 endpoint {self.endpoint} unreachable or misbehaving: {exc}")


def _spool(stream: BinaryIO) -> tuple[IO[bytes], str, int]:
    """Copy ``stream`` into a spooled temp file, rewound; return it, its SHA-256 and its size."""
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=PART_SIZE)  # noqa: SIM115 - returned
    digest = hashlib.sha256()
    size = 0
    try:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
            spool.write(chunk)
            size += len(chunk)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool, digest.hexdigest(), size


def _split_endpoint(endpoint: str, secure: bool) -> tuple[str, bool]:
    """``host:port`` as minio wants it; an ``http://``/``https://`` prefix sets ``secure``."""
    if "://" not in endpoint:
        return endpoint, secure
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise InvalidInput(f"S3 endpoint must be host[:port] or http(s)://host[:port], got {endpoint!r}.")
    return parts.netloc, parts.scheme == "https"


def _http_client(ca_bundle: str | os.PathLike[str] | None = None) -> urllib3.PoolManager:
    """minio's default pool, with a short connect timeout and few retries so that an unreachable
    endpoint fails in seconds rather than minutes; certificates checked against ``ca_bundle`` if given."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5, read=30),  # read: the longest silence within one response
        maxsize=16,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.fspath(ca_bundle) if ca_bundle is not None else os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(total=3, backoff_factor=0.1, status_forcelist=[500, 502, 503, 504]),
    )


def _response_time(headers: Any) -> datetime:
    """The server's ``Date`` of a write response (close to the object's Last-Modified), else now."""
    value = headers.get("date") if headers is not None else None
    if value:
        with contextlib.suppress(TypeError, ValueError):
            return _aware(email.utils.parsedate_to_datetime(value))
    return datetime.now(timezone.utc)


def _aware(moment: datetime | None) -> datetime:
    if moment is None:
        return datetime.now(timezone.utc)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
