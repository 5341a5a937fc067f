"""One measured transfer per process: ``python -m benchmarks._timed MODE ARGS...``.

Prints one JSON line: the wall time and CPU seconds (all threads) of the transfer itself,
measured here so that interpreter and import start-up are left out, plus what the mode knows.
The parent takes the process's peak RSS from ``os.wait4``.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    import django
    from django.apps import apps

    if not apps.ready:
        django.setup()


Run = Callable[[], dict[str, Any]]


def engine(path: str, key: str, checksum: str | None = None) -> Run:
    """queued_storage's S3 engine alone (no ledger), with the settings' defaults."""
    _django()
    from django.core.files.storage import storages

    from queued_storage._s3.client import s3_client
    from queued_storage._s3.upload import s3_transfer
    from queued_storage.transfer import EngineConfig

    config = EngineConfig.from_settings()
    remote = storages["s3"]
    s3_client(remote, config.max_concurrency)  # a running worker has its client already

    def run() -> dict[str, Any]:
        result = s3_transfer(
            remote,
            key,
            path,
            multipart_threshold=config.multipart_threshold,
            part_size=config.multipart_chunksize,
            max_concurrency=config.max_concurrency,
            read_size=config.chunk_size,
            checksum=checksum or config.checksum,
        )
        return {"checksum": result.checksum}

    return run


def boto3_default(path: str, key: str) -> Run:
    """boto3's ``upload_file`` with default settings (no Django)."""
    from botocore.config import Config

    unsigned = os.environ.get("BENCH_UNSIGNED") == "1"
    client = _boto3_client(Config(s3={"payload_signing_enabled": False}) if unsigned else None)

    def run() -> dict[str, Any]:
        client.upload_file(path, os.environ["QS_TEST_BUCKET"], key)
        return {}

    return run


def _boto3_client(config: Any = None) -> Any:
    """boto3's default client for the benchmark's endpoint and credentials (``config``: None,
    boto3's defaults, unless the row says otherwise)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=os.environ["QS_TEST_S3_DIRECT_ENDPOINT"],
        aws_access_key_id="bench",
        aws_secret_access_key="bench-secret",
        region_name="us-east-1",
        config=config,
    )


def crt(path: str, key: str) -> Run:
    """boto3's CRT transfer client (``s3transfer.crt.CRTTransferManager`` on awscrt), with its
    defaults, built for the benchmark's endpoint.

    boto3's own ``upload_file(..., Config=TransferConfig(preferred_transfer_client="crt"))``
    cannot reach a custom endpoint (see :func:`crt_probe`), so the manager is built here the
    way ``boto3/crt.py`` builds it, with the endpoint and ``use_ssl=False`` as the only
    changes. CRT signs and checksums in its own way (SigV4, CRC32 trailer) whatever
    ``BENCH_UNSIGNED`` says.
    """
    import awscrt
    import botocore.session
    from botocore.config import Config
    from s3transfer.crt import (
        BotocoreCRTCredentialsWrapper,
        BotocoreCRTRequestSerializer,
        CRTTransferManager,
        create_s3_crt_client,
    )

    endpoint = os.environ["QS_TEST_S3_DIRECT_ENDPOINT"]
    client = _boto3_client()
    provider = BotocoreCRTCredentialsWrapper(client._get_credentials())
    crt_client = create_s3_crt_client(
        "us-east-1",
        crt_credentials_provider=provider.to_crt_credentials_provider(),
        use_ssl=endpoint.startswith("https:"),
    )
    serializer = BotocoreCRTRequestSerializer(
        botocore.session.Session(),
        {
            "region_name": "us-east-1",
            "endpoint_url": endpoint,
            "config": Config(s3={"addressing_style": "path"}),
        },
    )
    manager = CRTTransferManager(crt_client, serializer)
    assert isinstance(manager, CRTTransferManager)
    # Where the requests go: the serializer's client decides the Host header CRT connects to.
    target = serializer._client.meta.endpoint_url
    assert target == endpoint, f"CRT would send to {target}, not {endpoint}"

    def run() -> dict[str, Any]:
        manager.upload(path, os.environ["QS_TEST_BUCKET"], key).result()
        manager.shutdown()
        return {
            "manager": type(manager).__module__ + "." + type(manager).__name__,
            "awscrt": awscrt.__version__,
            "endpoint": target,
        }

    return run


def crt_probe() -> Run:
    """What boto3's ``upload_file`` with ``preferred_transfer_client="crt"`` would use: the
    transfer manager's class and the endpoint its CRT requests are addressed to. Sends
    nothing."""
    import boto3.crt
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    client = _boto3_client()
    manager = create_transfer_manager(client, TransferConfig(preferred_transfer_client="crt"))
    serializer = boto3.crt.BOTOCORE_CRT_SERIALIZER

    def run() -> dict[str, Any]:
        return {
            "manager": type(manager).__module__ + "." + type(manager).__name__,
            "client_endpoint": client.meta.endpoint_url,
            "crt_endpoint": serializer._client.meta.endpoint_url if serializer else None,
        }

    return run


def storages_save(path: str, key: str) -> Run:
    """The old app's way: ``S3Storage.save(name, open_file)``."""
    _django()
    from django.core.files import File
    from django.core.files.storage import storages

    remote = storages["s3"]
    remote.connection  # noqa: B018  (a running process has its connection already)

    def run() -> dict[str, Any]:
        with open(path, "rb") as fh:
            stored = remote.save(key, File(fh, key))
        return {"name": stored}

    return run


def run_transfer(alias: str, name: str) -> Run:
    """The whole task policy (lease, engine, ledger) without Celery, for the resume row."""
    _django()
    from queued_storage.models import StoredFile
    from queued_storage.worker import run_transfer as run_policy

    def run() -> dict[str, Any]:
        row = StoredFile.get_row(alias, name)
        recorded = sum(int(p[3]) for p in row.parts) if row and row.parts else 0
        outcome = run_policy(alias, name)
        return {"outcome": outcome.value, "resumed_bytes": recorded}

    return run


def peak_rss_mib() -> float:
    """This process's peak RSS since its exec (VmHWM; not inherited from the parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


MODES: dict[str, Callable[..., Run]] = {
    "engine": engine,
    "engine-md5": lambda path, key: engine(path, key, "md5"),
    "boto3": boto3_default,
    "crt": crt,
    "crt-probe": crt_probe,
    "storages": storages_save,
    "run_transfer": run_transfer,
}


def _timed(mode: str, *args: str) -> dict[str, Any]:
    run = MODES[mode](*args)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    info = run()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {**info, "wall": round(wall, 4), "cpu": round(cpu, 4), "rss": peak_rss_mib()}


if __name__ == "__main__":
    print(json.dumps(_timed(sys.argv[1], *sys.argv[2:])), flush=True)
