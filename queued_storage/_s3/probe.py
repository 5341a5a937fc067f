"""One round trip to an S3 remote, for ``manage.py queued_storage doctor``.

``HeadBucket`` (reachable, the bucket exists, the credentials may list it), then a small
object written, read back and deleted under the storage's location, each request with a hard
timeout and no retries. The server's ``Date`` header of the first answer (an error's too) gives
the clock skew: S3 refuses requests signed more than 15 minutes off its clock.
"""

from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from botocore.exceptions import ClientError
from storages.backends.s3 import S3Storage

from queued_storage._s3.client import s3_client, s3_key
from queued_storage._s3.errors import error_code, http_status
from queued_storage._s3.objects import SSE_C

__all__ = ["Probe", "ProbeFailed", "probe"]

#: The object parameters a GET of an SSE-C object must repeat.


@dataclass(frozen=True)
class Probe:
    """What the round trip found: where, and the server's clock."""

    endpoint: str
    bucket: str
    key: str
    server_date: datetime.datetime | None
    seconds: float


class ProbeFailed(Exception):
    """A step of the probe failed: *step* is ``reach``, ``bucket``, ``write``, ``read``,
    ``compare`` or ``delete``; *code* S3's error code or HTTP status, if it answered."""

    def __init__(
        self,
        step: str,
        error: BaseException,
        *,
        endpoint: str,
        bucket: str,
        server_date: datetime.datetime | None,
    ) -> None:
        super().__init__(f"{step}: {type(error).__name__}: {error}")
        self.step, self.error = step, error
        self.endpoint, self.bucket, self.server_date = endpoint, bucket, server_date
        self.code = ""
        if isinstance(error, ClientError):
            self.code = error_code(error) or str(http_status(error) or "")


def _date(response: dict[str, Any]) -> datetime.datetime | None:
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    try:
        return parsedate_to_datetime(headers["date"]) if headers.get("date") else None
    except (TypeError, ValueError):
        return None


def probe(remote: S3Storage, name: str, *, timeout: float) -> Probe:
    """Ask *remote*'s bucket, then write, read back and delete the object *name*.

    Raises :class:`ProbeFailed` naming the step that failed; every request gives up after
    *timeout* seconds and is not retried.
    """
    client = s3_client(remote, timeout=timeout)
    endpoint = str(client.meta.endpoint_url)
    bucket = str(remote.bucket_name)
    key = s3_key(remote, name)
    date: datetime.datetime | None = None
    began = time.monotonic()

    def failed(step: str, err: BaseException) -> ProbeFailed:
        return ProbeFailed(step, err, endpoint=endpoint, bucket=bucket, server_date=date)

    try:
        date = _date(dict(client.head_bucket(Bucket=bucket)))
    except ClientError as err:
        date = _date(err.response)  # type: ignore[arg-type]
        raise failed("bucket", err) from err
    except Exception as err:
        raise failed("reach", err) from err
    parameters = remote.get_object_parameters(key)
    sse_c = {k: v for k, v in parameters.items() if k in SSE_C}
    body = os.urandom(16).hex().encode()
    try:
        client.put_object(Bucket=bucket, Key=key, Body=body, **parameters)
    except Exception as err:
        raise failed("write", err) from err
    try:
        try:
            read = client.get_object(Bucket=bucket, Key=key, **sse_c)["Body"].read()
        except Exception as err:
            raise failed("read", err) from err
        if read != body:
            raise failed("compare", ValueError(f"read back {len(read)} other bytes"))
    finally:
        try:
            client.delete_object(Bucket=bucket, Key=key)
        except Exception as err:
            raise failed("delete", err) from err
    return Probe(endpoint, bucket, key, date, time.monotonic() - began)
