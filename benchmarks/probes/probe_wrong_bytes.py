"""Probe (issue 23): what a server that does not check checksum headers leaves to find.

A part is sent with the wrong bytes under the right (signed) CRC32 header; the upload is
completed. Is the lie visible afterwards, and in what: ListParts' ETag (the MD5 the server
computed from the bytes), the composite CRC32, the object's size?

    python -m moto.server -H 127.0.0.1 -p 50923 &
    python benchmarks/probes/probe_wrong_bytes.py http://127.0.0.1:50923
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import sys
import uuid
import zlib

import boto3
import requests
from botocore.config import Config

ENDPOINT = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:50923"
BUCKET = "probe-wrong"
MiB = 1024 * 1024


def crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


client = boto3.client(
    "s3",
    endpoint_url=ENDPOINT,
    region_name="us-east-1",
    aws_access_key_id="testing",
    aws_secret_access_key="testing",
    config=Config(signature_version="s3v4", request_checksum_calculation="when_required"),
)
with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
    client.create_bucket(Bucket=BUCKET)

declared = [b"a" * 5 * MiB, b"b" * MiB]  # what the client declared (checksums per part)
sent = [b"a" * 5 * MiB, b"X" * MiB]  # part 2 carries other bytes of the same size
key = f"wrong-{uuid.uuid4().hex[:8]}.bin"
uid = client.create_multipart_upload(Bucket=BUCKET, Key=key, ChecksumAlgorithm="CRC32")["UploadId"]
for n, (want, data) in enumerate(zip(declared, sent, strict=True), start=1):
    url = client.generate_presigned_url(
        "upload_part",
        Params={
            "Bucket": BUCKET,
            "Key": key,
            "UploadId": uid,
            "PartNumber": n,
            "ChecksumCRC32": crc32_b64(want),
            "ChecksumAlgorithm": "CRC32",
        },
        ExpiresIn=600,
    )
    r = requests.put(
        url,
        data=data,
        headers={"x-amz-checksum-crc32": crc32_b64(want), "x-amz-sdk-checksum-algorithm": "CRC32"},
    )
    print(f"part {n}: {r.status_code}")
listed = client.list_parts(Bucket=BUCKET, Key=key, UploadId=uid)["Parts"]
for p, want, data in zip(listed, declared, sent, strict=True):
    print(
        f"part {p['PartNumber']}: ETag {p['ETag']} | MD5 declared {hashlib.md5(want).hexdigest()}"
        f" | MD5 sent {hashlib.md5(data).hexdigest()}"
    )
client.complete_multipart_upload(
    Bucket=BUCKET,
    Key=key,
    UploadId=uid,
    IfNoneMatch="*",
    MultipartUpload={
        "Parts": [
            {"PartNumber": p["PartNumber"], "ETag": p["ETag"], "ChecksumCRC32": crc32_b64(w)}
            for p, w in zip(listed, declared, strict=True)
        ]
    },
)
head = client.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
joined = b"".join(base64.b64decode(crc32_b64(w)) for w in declared)
actual = b"".join(base64.b64decode(crc32_b64(d)) for d in sent)
print(
    "HEAD composite:",
    head.get("ChecksumCRC32"),
    "| from declared:",
    crc32_b64(joined),
    "| from bytes sent:",
    crc32_b64(actual),
)
client.delete_object(Bucket=BUCKET, Key=key)
