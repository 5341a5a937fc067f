"""Probe (issue 23): what an S3 server enforces on presigned ``UploadPart`` URLs.

Run against a moto server you started yourself (a few seconds, no Django)::

    python -m moto.server -H 127.0.0.1 -p 50923 &
    python benchmarks/probes/probe_presigned_parts.py http://127.0.0.1:50923

Prints one line per case: what was signed, what was sent, the status and S3's error code.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import sys
import urllib.parse
import uuid
import zlib

import boto3
import requests
from botocore.config import Config

ENDPOINT = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:50923"
BUCKET = "probe-direct"
MiB = 1024 * 1024
RUN = uuid.uuid4().hex[:8]  # keys of this run


def crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


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


def start(key: str) -> str:
    return client.create_multipart_upload(Bucket=BUCKET, Key=key, ChecksumAlgorithm="CRC32")[
        "UploadId"
    ]


def presign(key: str, upload_id: str, number: int, **signed: object) -> str:
    return client.generate_presigned_url(
        "upload_part",
        Params={
            "Bucket": BUCKET,
            "Key": key,
            "UploadId": upload_id,
            "PartNumber": number,
            **signed,
        },
        ExpiresIn=600,
    )


def show(case: str, response: requests.Response) -> None:
    code = ""
    if "<Code>" in response.text:
        code = response.text.split("<Code>")[1].split("</Code>")[0]
    echo = response.headers.get("x-amz-checksum-crc32", "")
    print(f"{case:<64} {response.status_code} {code or '-'} crc32-echo={echo or '-'}")


good = b"a" * MiB
bad = b"b" * MiB

# 1. What the URL carries: signed headers vs hoisted query parameters.
key = f"{RUN}/crc32.bin"
uid = start(key)
url = presign(key, uid, 1, ChecksumCRC32=crc32_b64(good), ChecksumAlgorithm="CRC32")
query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
print("signed headers:", query["X-Amz-SignedHeaders"])
print(
    "query keys:",
    sorted(k for k in query if not k.startswith("X-Amz-")) or "-",
    "| x-amz-* in query:",
    sorted(k for k in query if k.lower().startswith("x-amz-c")),
)

# 2. CRC32 signed in the URL.
hdr = {"x-amz-checksum-crc32": crc32_b64(good), "x-amz-sdk-checksum-algorithm": "CRC32"}
show("crc32: right bytes, signed header sent", requests.put(url, data=good, headers=hdr))
show("crc32: wrong bytes, signed header sent", requests.put(url, data=bad, headers=hdr))
show("crc32: right bytes, header left out", requests.put(url, data=good))
show("crc32: wrong bytes, header left out", requests.put(url, data=bad))
alt = {**hdr, "x-amz-checksum-crc32": crc32_b64(bad)}
show("crc32: wrong bytes, header altered to match them", requests.put(url, data=bad, headers=alt))
tampered = url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
show("crc32: right bytes, signature tampered", requests.put(tampered, data=good, headers=hdr))
parts = client.list_parts(Bucket=BUCKET, Key=key, UploadId=uid)["Parts"]
print(
    "ListParts after the cases:",
    [(p["PartNumber"], p["Size"], p.get("ChecksumCRC32")) for p in parts],
)

# 3. Content-MD5 signed in the URL.
key = f"{RUN}/md5.bin"
uid = start(key)
url = presign(key, uid, 1, ContentMD5=md5_b64(good))
print(
    "signed headers (md5):",
    urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["X-Amz-SignedHeaders"],
)
show(
    "md5: right bytes, signed Content-MD5",
    requests.put(url, data=good, headers={"Content-MD5": md5_b64(good)}),
)
show(
    "md5: wrong bytes, signed Content-MD5",
    requests.put(url, data=bad, headers={"Content-MD5": md5_b64(good)}),
)
show("md5: wrong bytes, no Content-MD5", requests.put(url, data=bad))

# 4. Content-Length signed in the URL: 1 MiB declared, 5 MiB sent.
key = f"{RUN}/length.bin"
uid = start(key)
url = presign(key, uid, 1, ContentLength=MiB)
print(
    "signed headers (length):",
    urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["X-Amz-SignedHeaders"],
)
show("length: 1 MiB signed, 1 MiB sent", requests.put(url, data=good))
show("length: 1 MiB signed, 5 MiB sent", requests.put(url, data=b"c" * 5 * MiB))
parts = client.list_parts(Bucket=BUCKET, Key=key, UploadId=uid)["Parts"]
print("ListParts sizes:", [(p["PartNumber"], p["Size"]) for p in parts])
client.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=uid)
