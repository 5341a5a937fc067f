"""Probe (issue 23): resume, conditional completion, composite checksum, abort, CORS.

Run against a moto server you started yourself (a few seconds, no Django)::

    python -m moto.server -H 127.0.0.1 -p 50923 &
    python benchmarks/probes/probe_multipart_complete.py http://127.0.0.1:50923
"""

from __future__ import annotations

import base64
import contextlib
import sys
import uuid
import zlib

import boto3
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:50923"
BUCKET = "probe-complete"
ORIGIN = "https://app.example"
MiB = 1024 * 1024
PART = 5 * MiB


def crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def code(err: ClientError) -> str:
    meta = err.response["ResponseMetadata"]["HTTPStatusCode"]
    return f"{meta} {err.response['Error']['Code']}"


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

body = bytes(range(256)) * (12 * MiB // 256)  # 12 MiB: parts of 5, 5, 2 MiB
chunks = [body[i : i + PART] for i in range(0, len(body), PART)]
others = [bytes(reversed(c)) for c in chunks]  # another file's parts, same sizes
RUN = uuid.uuid4().hex[:8]  # keys of this run (the server keeps earlier runs' objects)


def upload(
    key: str, send: list[int], data: list[bytes] = chunks
) -> tuple[str, dict[int, dict[str, str]]]:
    uid = client.create_multipart_upload(Bucket=BUCKET, Key=key, ChecksumAlgorithm="CRC32")[
        "UploadId"
    ]
    sent: dict[int, dict[str, str]] = {}
    for n in send:
        url = client.generate_presigned_url(
            "upload_part",
            Params={
                "Bucket": BUCKET,
                "Key": key,
                "UploadId": uid,
                "PartNumber": n,
                "ChecksumCRC32": crc32_b64(data[n - 1]),
                "ChecksumAlgorithm": "CRC32",
            },
            ExpiresIn=600,
        )
        r = requests.put(
            url,
            data=data[n - 1],
            headers={
                "x-amz-checksum-crc32": crc32_b64(data[n - 1]),
                "x-amz-sdk-checksum-algorithm": "CRC32",
                "Origin": ORIGIN,
            },
        )
        assert r.status_code == 200, r.text
        sent[n] = {"ETag": r.headers["ETag"], "ChecksumCRC32": crc32_b64(data[n - 1])}
    return uid, sent


def entries(sent: dict[int, dict[str, str]]) -> list[dict[str, object]]:
    return [{"PartNumber": n, **v} for n, v in sorted(sent.items())]


# 1. Resume: two parts sent, a "reload", ListParts says which, the rest is sent.
key = f"{RUN}/resume.bin"
uid, sent = upload(key, [1, 2])
listed = client.list_parts(Bucket=BUCKET, Key=key, UploadId=uid)
print(
    "ListParts:",
    [(p["PartNumber"], p["Size"], p["ETag"], p.get("ChecksumCRC32")) for p in listed["Parts"]],
    "| ChecksumAlgorithm:",
    listed.get("ChecksumAlgorithm"),
)
page = client.list_parts(Bucket=BUCKET, Key=key, UploadId=uid, MaxParts=1)
print(
    "ListParts MaxParts=1:",
    [p["PartNumber"] for p in page["Parts"]],
    "truncated:",
    page.get("IsTruncated"),
    "next marker:",
    page.get("NextPartNumberMarker"),
)
page = client.list_parts(
    Bucket=BUCKET, Key=key, UploadId=uid, MaxParts=1, PartNumberMarker=page["NextPartNumberMarker"]
)
print(
    "  next page:", [p["PartNumber"] for p in page["Parts"]], "truncated:", page.get("IsTruncated")
)

# 2. Complete with a part list from another upload (same key, other upload id).
other_uid, other_sent = upload(key, [1, 2], others)
try:
    client.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=uid, MultipartUpload={"Parts": entries(other_sent)}
    )
    print("complete with another upload's part list: accepted")
except ClientError as err:
    print("complete with another upload's part list:", code(err))
client.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=other_uid)

# 3. Complete with a part 3 that was never sent.
wrong = [*entries(sent), {"PartNumber": 3, "ETag": '"0123"', "ChecksumCRC32": "AAAAAA=="}]
try:
    client.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=uid, MultipartUpload={"Parts": wrong}
    )
    print("complete with a made-up part 3: accepted")
except ClientError as err:
    print("complete with a made-up part 3:", code(err))

# 4. Finish the resumed upload, conditionally; then HEAD and GetObjectAttributes.
url = client.generate_presigned_url(
    "upload_part",
    Params={
        "Bucket": BUCKET,
        "Key": key,
        "UploadId": uid,
        "PartNumber": 3,
        "ChecksumCRC32": crc32_b64(chunks[2]),
        "ChecksumAlgorithm": "CRC32",
    },
    ExpiresIn=600,
)
r = requests.put(
    url,
    data=chunks[2],
    headers={"x-amz-checksum-crc32": crc32_b64(chunks[2]), "x-amz-sdk-checksum-algorithm": "CRC32"},
)
sent[3] = {"ETag": r.headers["ETag"], "ChecksumCRC32": crc32_b64(chunks[2])}
done = client.complete_multipart_upload(
    Bucket=BUCKET, Key=key, UploadId=uid, IfNoneMatch="*", MultipartUpload={"Parts": entries(sent)}
)
print(
    "complete (If-None-Match: *):",
    done["ResponseMetadata"]["HTTPStatusCode"],
    "ChecksumCRC32:",
    done.get("ChecksumCRC32"),
    "ChecksumType:",
    done.get("ChecksumType"),
)
joined = b"".join(base64.b64decode(crc32_b64(c)) for c in chunks)
print(
    "expected composite:",
    f"{crc32_b64(joined)}-{len(chunks)}",
    "| full-object CRC32:",
    crc32_b64(body),
)
head = client.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
print("HeadObject:", head["ContentLength"], head.get("ChecksumCRC32"), head.get("ChecksumType"))
try:
    attrs = client.get_object_attributes(
        Bucket=BUCKET, Key=key, ObjectAttributes=["Checksum", "ObjectParts", "ObjectSize", "ETag"]
    )
    attrs.pop("ResponseMetadata")
    print("GetObjectAttributes:", attrs)
except ClientError as err:
    print("GetObjectAttributes:", code(err))
print("bytes identical:", client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body)

# 4b. An upload created with CRC32, completed without the parts' checksums.
bare_key = f"{RUN}/bare.bin"
bare_uid, bare_sent = upload(bare_key, [1, 2, 3])
try:
    client.complete_multipart_upload(
        Bucket=BUCKET,
        Key=bare_key,
        UploadId=bare_uid,
        MultipartUpload={
            "Parts": [{"PartNumber": n, "ETag": v["ETag"]} for n, v in sorted(bare_sent.items())]
        },
    )
    print("complete without the parts' CRC32s: accepted")
except ClientError as err:
    print("complete without the parts' CRC32s:", code(err))

# 5. A second upload to the same key, completed conditionally: never overwrites.
uid2, sent2 = upload(key, [1, 2, 3])
try:
    client.complete_multipart_upload(
        Bucket=BUCKET,
        Key=key,
        UploadId=uid2,
        IfNoneMatch="*",
        MultipartUpload={"Parts": entries(sent2)},
    )
    print("second complete (If-None-Match: *): accepted")
except ClientError as err:
    print("second complete (If-None-Match: *):", code(err))
print(
    "upload still listed after the refused complete:",
    any(
        u["UploadId"] == uid2
        for u in client.list_multipart_uploads(Bucket=BUCKET, Prefix=RUN).get("Uploads", [])
    ),
)

# 6. Abort: the uploads listing, ListParts and a part PUT after it.
stamp = {
    u["UploadId"]: u["Initiated"]
    for u in client.list_multipart_uploads(Bucket=BUCKET, Prefix=RUN)["Uploads"]
}
print("ListMultipartUploads holds:", len(stamp), "initiated:", stamp.get(uid2))
url = client.generate_presigned_url(
    "upload_part",
    Params={"Bucket": BUCKET, "Key": key, "UploadId": uid2, "PartNumber": 1},
    ExpiresIn=600,
)
client.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=uid2)
try:
    client.list_parts(Bucket=BUCKET, Key=key, UploadId=uid2)
except ClientError as err:
    print("ListParts after abort:", code(err))
r = requests.put(url, data=b"x")
print(
    "part PUT after abort:",
    r.status_code,
    r.text.split("<Code>")[1].split("</Code>")[0] if "<Code>" in r.text else "",
)
try:
    client.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=uid2)
    print("second abort: accepted")
except ClientError as err:
    print("second abort:", code(err))

# 7. Too small a part that is not the last one.
small = f"{RUN}/small.bin"
uid3 = client.create_multipart_upload(Bucket=BUCKET, Key=small)["UploadId"]
tags = []
for n, data in enumerate([b"s" * MiB, b"t" * MiB], start=1):
    tags.append(
        {
            "PartNumber": n,
            "ETag": client.upload_part(
                Bucket=BUCKET, Key=small, UploadId=uid3, PartNumber=n, Body=data
            )["ETag"],
        }
    )
try:
    client.complete_multipart_upload(
        Bucket=BUCKET, Key=small, UploadId=uid3, MultipartUpload={"Parts": tags}
    )
    print("complete with a 1 MiB first part: accepted")
except ClientError as err:
    print("complete with a 1 MiB first part:", code(err))

# 8. CORS: the bucket's rules, a browser's preflight, the PUT's exposed headers.
client.put_bucket_cors(
    Bucket=BUCKET,
    CORSConfiguration={
        "CORSRules": [
            {
                "AllowedOrigins": [ORIGIN],
                "AllowedMethods": ["PUT"],
                "AllowedHeaders": [
                    "content-type",
                    "x-amz-checksum-crc32",
                    "x-amz-sdk-checksum-algorithm",
                ],
                "ExposeHeaders": ["ETag", "x-amz-checksum-crc32"],
                "MaxAgeSeconds": 3000,
            }
        ]
    },
)
part_url = f"{ENDPOINT}/{BUCKET}/{key}?partNumber=1&uploadId=x"
for origin, headers in (
    (ORIGIN, "x-amz-checksum-crc32,x-amz-sdk-checksum-algorithm"),
    (ORIGIN, "x-amz-checksum-crc32,x-custom"),
    ("https://evil.example", "x-amz-checksum-crc32"),
):
    r = requests.options(
        part_url,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": headers,
        },
    )
    print(
        f"preflight {origin} [{headers}]:",
        r.status_code,
        {k: v for k, v in r.headers.items() if k.lower().startswith("access-control")},
    )
uid4, sent4 = upload(f"{RUN}/cors.bin", [1])
url = client.generate_presigned_url(
    "upload_part",
    Params={"Bucket": BUCKET, "Key": f"{RUN}/cors.bin", "UploadId": uid4, "PartNumber": 2},
    ExpiresIn=600,
)
r = requests.put(url, data=b"y", headers={"Origin": ORIGIN})
print(
    "PUT with Origin:",
    r.status_code,
    {k: v for k, v in r.headers.items() if k.lower().startswith("access-control") or k == "ETag"},
)
client.abort_multipart_upload(Bucket=BUCKET, Key=f"{RUN}/cors.bin", UploadId=uid4)
