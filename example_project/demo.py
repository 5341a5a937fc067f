#!/usr/bin/env python
"""Run the queued_storage demo on loopback: ``python example_project/demo.py [--smoke] [--port N]``.

Unless the environment names a real S3 (see the docstring of ``example/settings.py``), a moto
S3 server is started on a free loopback port. Then the SQLite database is migrated, the
superuser ``admin``/``admin`` is created (a local demo only), a Celery worker is started, and

* by default, Django's development server runs until Ctrl-C (or SIGTERM): upload files on the
  upload page (``/upload/``) and watch each one move from the staging disk to S3;
* with ``--smoke``, a 1 MiB upload is saved and checked end to end instead: served locally
  before the commit, transferred and verified after it, then served from S3 byte for byte.
  Then the upload page's path: the page carries the widget in tus mode, a tus upload in two
  chunks (``POST``, ``PATCH``, ``HEAD`` for the offset, ``PATCH``), the status endpoint until
  ``remote``, the S3 URL (through Django's test client: no browser). An image is saved and its
  thumbnail (``gallery/processors.py``) checked on S3; with a clamd, the EICAR test file is
  saved and checked ``rejected``, never on S3.
  Exit status 0 when every check passes, 1 otherwise (with the tail of the worker's log).

When ``clamd`` is installed (``apt-get install clamav-daemon``) and ``DEMO_CLAMD_ADDRESS`` is
not set, a private ``clamd`` is started on a free loopback port with a signature database this
script writes (the EICAR test file's MD5 only: no download, loaded in a tenth of a second), and
the worker scans every upload with it before sending it to S3. Without ``clamd`` uploads are
not scanned, and the demo says so.

Every child process runs in its own process group (Ctrl-C in the terminal reaches only this
launcher) and is stopped when the launcher exits, also after an error: the life cycle of
``qs_dev.processes.ManagedProcess``, shared with the test harness and the benchmarks (``qs_dev``
is development tooling at the repository's root, not test code; this script puts the root on
``sys.path``).
"""

from __future__ import annotations

import argparse
import atexit
import base64
import hashlib
import os
import shutil
import signal
import socket
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import unquote, urlsplit

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # qs_dev: the repository's development tooling, not installed
    sys.path.insert(0, str(REPO))

from qs_dev.processes import (  # noqa: E402
    LOOPBACK,
    ManagedProcess,
    free_port,
    http_status,
    port_is_free,
)

if TYPE_CHECKING:  # Django is set up later, by setup_django()
    from queued_storage.models import StoredFile

SETTINGS_MODULE = "example.settings"
DEFAULT_PORT = 8000
SMOKE_SIZE = 1024 * 1024 + 321  # ~1 MiB, not a multiple of any block size
SMOKE_PAGE_SIZE = 64 * 1024 + 7  # the upload page's smoke upload
SMOKE_TIMEOUT = 60.0
SMOKE_IMAGE_SIZE = (640, 480)
#: The ClamAV daemon the settings give the worker's processors (example/settings.py).
ENV_CLAMD = "DEMO_CLAMD_ADDRESS"
CLAMD_BINARIES = ("/usr/sbin/clamd", "/usr/bin/clamd")
#: The standard antivirus test file (EICAR): any scanner reports it, and it is harmless.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"

T = TypeVar("T")


class DemoError(Exception):
    """A step of the demo failed; the message says which and why."""


class Interrupted(Exception):
    """SIGINT or SIGTERM was received."""


STOP = threading.Event()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    STOP.set()


def checkpoint() -> None:
    """Raise :class:`Interrupted` once a stop signal has arrived."""
    if STOP.is_set():
        raise Interrupted


def say(message: str) -> None:
    print(message, flush=True)


# --- waiting and child processes -------------------------------------------------------------
def wait_until(
    what: str, probe: Callable[[], T | None], timeout: float, alive: ManagedProcess | None = None
) -> T:
    """Poll *probe* until it returns a value that is not ``None``/false; fail after *timeout*."""
    deadline = time.monotonic() + timeout
    while True:
        checkpoint()
        value = probe()
        if value:
            return value
        if alive is not None and not alive.running:
            raise DemoError(f"{alive.name} exited with status {alive.returncode} while {what}")
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f}s {what}")
        time.sleep(0.1)


CHILDREN: list[ManagedProcess] = []


def start_child(
    name: str, argv: list[str], data: Path, *, echo: bool, stop_timeout: float = 10.0
) -> ManagedProcess:
    """Start a child in its own process group (Ctrl-C in the terminal reaches only this
    launcher), its output in ``<data>/<name>.log`` (with ``echo``, also printed, each line
    prefixed with the name); ``stop_timeout``: seconds between SIGTERM and SIGKILL."""
    child = ManagedProcess(
        name,
        log_path=data / f"{name}.log",
        cwd=HERE,
        echo=echo,
        append=False,
        stop_timeout=stop_timeout,
    )
    child.start(argv, env=child_env())
    CHILDREN.append(child)
    return child


def stop_all() -> None:
    """Stop every child, the last started first (web server, worker, then S3)."""
    while CHILDREN:
        child = CHILDREN.pop()
        try:
            child.stop()
        except Exception as err:  # keep stopping the others
            print(f"could not stop {child.name}: {err}", file=sys.stderr)


# --- set-up --------------------------------------------------------------------------------------
def child_env() -> dict[str, str]:
    """The environment of every child: ours (with the S3 endpoint) plus the import paths."""
    env = dict(os.environ)
    paths = [str(HERE), str(REPO)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["DJANGO_SETTINGS_MODULE"] = SETTINGS_MODULE
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_moto(data: Path) -> tuple[ManagedProcess, int]:
    port = free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)]
    return start_child("moto", argv, data, echo=False), port


def start_worker(data: Path, *, echo: bool) -> ManagedProcess:
    return start_child(
        "worker",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "example",
            "worker",
            "-P",
            "solo",
            "--concurrency",
            "1",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--hostname",
            f"demo-{os.getpid()}@%h",
        ],
        data,
        echo=echo,
        stop_timeout=30.0,  # the worker finishes the transfer it is running
    )


def clamd_binary() -> str | None:
    """``clamd`` on PATH, else where Debian's ``clamav-daemon`` installs it; ``None``: none."""
    found = shutil.which("clamd")
    if found is not None:
        return found
    return next((path for path in CLAMD_BINARIES if os.access(path, os.X_OK)), None)


def start_clamd(binary: str, data: Path) -> tuple[ManagedProcess, int]:
    """A private ``clamd`` on a free loopback port, in the foreground, with a signature
    database of its own: one ``.hdb`` line (``md5:size:name``) for the EICAR test file. It
    reads no file itself (the worker streams each one with ``INSTREAM``)."""
    folder = data / "clamd"
    database = folder / "db"
    database.mkdir(parents=True, exist_ok=True)
    md5 = hashlib.md5(EICAR, usedforsecurity=False).hexdigest()
    (database / "demo.hdb").write_text(f"{md5}:{len(EICAR)}:Demo.EICAR\n")
    port = free_port()
    lines = [
        "Foreground yes",
        f"TCPSocket {port}",
        f"TCPAddr {LOOPBACK}",
        f"DatabaseDirectory {database}",
        "StreamMaxLength 100M",
    ]
    if os.geteuid() == 0:
        lines.append("User root")  # else clamd switches to the user clamav, who cannot read db/
    config = folder / "clamd.conf"
    config.write_text("\n".join(lines) + "\n")
    return start_child("clamd", [binary, f"--config-file={config}"], data, echo=False), port


def clamd_answers(port: int) -> bool:
    """Whether the clamd on *port* answers ``zPING`` (once its database is loaded)."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1) as sock:
            sock.sendall(b"zPING\0")
            return sock.recv(16).startswith(b"PONG")
    except OSError:
        return False


def scanning(data: Path) -> str | None:
    """Start a private clamd unless ``DEMO_CLAMD_ADDRESS`` names one; export its address for
    the settings (this process and the worker). The address, or ``None``: no scanning (said
    in one line, with how to turn it on). Never fails the demo: it runs without a scanner."""
    address = os.environ.get(ENV_CLAMD) or None
    if address is not None:
        say(f"ok: uploads are scanned by the clamd at {address} ({ENV_CLAMD})")
        return address
    binary = clamd_binary()
    if binary is None:
        say(
            "uploads are not scanned: clamd is not installed "
            "(apt-get install clamav-daemon, then run the demo again)"
        )
        return None
    clamd, port = start_clamd(binary, data)
    try:
        wait_until("waiting for clamd", lambda: clamd_answers(port), 30, alive=clamd)
    except DemoError as err:
        CHILDREN.remove(clamd)
        clamd.stop()
        say(f"uploads are not scanned: {err}; see {clamd.log_path}")
        return None
    address = f"{LOOPBACK}:{port}"
    os.environ[ENV_CLAMD] = address  # for the settings of this process and the children
    say(f"ok: clamd on {address} scans uploads (a private one: its only signature is EICAR's)")
    return address


def setup_django() -> None:
    for path in (str(REPO), str(HERE)):
        if path not in sys.path:
            sys.path.insert(0, path)
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS_MODULE
    import django

    django.setup()


def migrate_and_admin() -> None:
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)
    say("ok: database migrated")
    user_model = get_user_model()
    if not user_model.objects.filter(username="admin").exists():
        user_model.objects.create_superuser("admin", "admin@example.invalid", "admin")
        say("created the superuser admin / admin (a local demo only: never use it elsewhere)")


def forget_previous_run() -> None:
    """A new moto server starts empty: drop the uploads an earlier run recorded as on S3."""
    from django.conf import settings
    from django.core.cache import caches
    from django.core.files.storage import FileSystemStorage, storages

    from gallery.models import Upload
    from queued_storage.models import StoredFile

    uploads = Upload.objects.count()
    StoredFile.objects.all().delete()
    Upload.objects.all().delete()
    caches["default"].clear()
    shutil.rmtree(cast(FileSystemStorage, storages["staging"]).location, ignore_errors=True)
    queue = Path(str(settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("data_folder_in", "")))
    if settings.CELERY_BROKER_URL == "filesystem://" and queue.is_dir():
        for message in queue.glob("*.msg"):
            message.unlink(missing_ok=True)
    if uploads:
        say(f"moto keeps nothing between runs: removed {uploads} upload(s) of an earlier run")


def ensure_bucket() -> str:
    """Create the bucket if it is missing; return its name."""
    from botocore.exceptions import ClientError
    from django.core.files.storage import storages

    s3: Any = storages["s3"]
    client = s3.connection.meta.client
    bucket = str(s3.bucket_name)
    try:
        client.head_bucket(Bucket=bucket)
        return bucket
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        if code not in ("404", "NoSuchBucket", "NotFound"):
            raise DemoError(f"cannot use the bucket {bucket!r}: {code or err}") from err
    region = s3.region_name or "us-east-1"
    options: dict[str, Any] = {}
    if region != "us-east-1":
        options["CreateBucketConfiguration"] = {"LocationConstraint": region}
    client.create_bucket(Bucket=bucket, **options)
    say(f"ok: created the bucket {bucket!r}")
    return bucket


def wait_worker_ready(worker: ManagedProcess, timeout: float = 60.0) -> None:
    wait_until(
        "waiting for the Celery worker to be ready",
        lambda: " ready." in worker.log_text(),
        timeout,
        alive=worker,
    )
    say("ok: Celery worker ready")


# --- the two modes -------------------------------------------------------------------------------
def check(condition: bool, message: str) -> None:
    if not condition:
        raise DemoError(message)


def smoke(worker: ManagedProcess, endpoint: str | None, *, scanned: bool) -> None:
    """Save ~1 MiB, check it end to end: local before commit, S3 after the transfer (and,
    when *scanned*, that ClamAV passed it); then the thumbnail, the scan, the upload page
    and a direct upload."""
    import requests
    from django.core.files.base import ContentFile
    from django.db import transaction

    from gallery.models import Upload
    from queued_storage.models import State, StoredFile

    data = os.urandom(SMOKE_SIZE)
    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
    with transaction.atomic():
        upload = Upload(title="smoke test")
        upload.file.save("smoke.bin", ContentFile(data), save=True)
        name = str(upload.file.name)
        storage: Any = upload.file.storage
        check(storage.using_local(name), f"{name} is not served locally before the commit")
        url = upload.file.url
        view = "/uploads/files/"
        check(url.startswith(view), f"a URL of the staged-file view {view} expected, got {url}")
        with storage.open(name, "rb") as fh:
            check(fh.read() == data, "the local copy does not hold the uploaded bytes")
    say(f"ok: served locally ({url}, {len(data)} bytes)")

    def transferred() -> StoredFile | None:
        row: StoredFile | None = StoredFile.objects.filter(alias=storage.alias, name=name).first()
        if row is not None and row.state == State.FAILED:
            raise DemoError(f"the transfer failed: {row.last_error}")
        # "remote" is committed before the local copy is deleted: wait for both.
        if row is not None and row.state == State.REMOTE and not row.local_exists:
            return row
        return None

    row: StoredFile = wait_until(
        "waiting for the transfer to S3", transferred, SMOKE_TIMEOUT, alive=worker
    )
    check(row.checksum == md5, f"ledger checksum {row.checksum!r} is not the MD5 {md5!r}")
    check(row.size == len(data), f"ledger size {row.size} is not {len(data)}")
    scan = (row.metadata or {}).get("scan")
    check(not scanned or scan is not None, "the file was sent without a scan")
    say(f"ok: {'scanned by ClamAV, ' if scan else ''}transferred and verified")

    upload = Upload.objects.get(pk=upload.pk)
    check(upload.file.is_remote, "the field does not report the file as remote")
    url = upload.file.url
    expected = endpoint.rstrip("/") + "/" if endpoint else "https://"
    check(url.startswith(expected), f"an S3 URL under {expected} expected, got {url}")
    with requests.Session() as session:
        session.trust_env = urlsplit(url).hostname != LOOPBACK  # no proxy for loopback
        response = session.get(url, timeout=30)
    check(response.status_code == 200, f"GET of the S3 URL answered HTTP {response.status_code}")
    check(response.content == data, "the S3 copy does not hold the uploaded bytes")
    local_path = Path(storage.local.path(name))
    check(not local_path.exists(), f"the local copy {local_path} was not deleted")
    say(f"ok: served from S3 {url.split('?', 1)[0]}")

    upload.file.delete(save=False)
    upload.delete()
    smoke_thumbnail(worker, expected)
    if scanned:
        smoke_scan(worker)
    smoke_upload_page(worker, expected)
    smoke_direct_upload(expected)


def settled(alias: str, name: str) -> Callable[[], StoredFile | None]:
    """A probe for :func:`wait_until`: *name*'s row once it is ``rejected``, ``failed``, or
    ``remote`` with its local copy deleted (``remote`` is committed before the deletion)."""
    from queued_storage.models import State, StoredFile

    def probe() -> StoredFile | None:
        row: StoredFile | None = StoredFile.objects.filter(alias=alias, name=name).first()
        if row is None or row.state in (State.PENDING, State.TRANSFERRING):
            return None
        return None if row.state == State.REMOTE and row.local_exists else row

    return probe


def smoke_thumbnail(worker: ManagedProcess, s3_prefix: str) -> None:
    """An image saved through the model: the worker makes its thumbnail before sending it
    (``gallery.processors.Thumbnail``), and both end on S3, verified; the thumbnail's S3 URL
    serves a JPEG of the thumbnail's size."""
    import io

    import requests
    from django.core.files.base import ContentFile
    from django.db import transaction
    from PIL import Image

    from gallery.models import Upload
    from gallery.processors import thumbnail_name
    from queued_storage.models import State

    width, height = SMOKE_IMAGE_SIZE
    image = Image.new("RGB", (width, height))
    image.putdata([(x % 256, y % 256, 160) for y in range(height) for x in range(width)])
    out = io.BytesIO()
    image.save(out, "PNG")
    with transaction.atomic():
        upload = Upload(title="smoke image")
        upload.image.save("smoke.png", ContentFile(out.getvalue()), save=True)
    name = str(upload.image.name)
    storage: Any = upload.image.storage
    derived = thumbnail_name(name)
    for what in (name, derived):
        row = wait_until(
            f"waiting for {what} on S3", settled(storage.alias, what), SMOKE_TIMEOUT, worker
        )
        check(row.state == State.REMOTE, f"{what} ended {row.state}: {row.last_error}")
    kept = row_metadata(storage.alias, name)
    check(kept.get("thumbnail") == derived, f"no thumbnail {derived!r} in the metadata {kept!r}")
    check(kept.get("image", {}).get("width") == width, f"no image size in {kept!r}")
    url = Upload.objects.get(pk=upload.pk).thumbnail_url or ""
    check(url.startswith(s3_prefix), f"an S3 URL under {s3_prefix} expected, got {url}")
    with requests.Session() as session:
        session.trust_env = urlsplit(url).hostname != LOOPBACK
        response = session.get(url, timeout=30)
    check(response.status_code == 200, f"GET of the thumbnail answered {response.status_code}")
    with Image.open(io.BytesIO(response.content)) as thumb:
        shown = (thumb.format, thumb.size)
    check(shown == ("JPEG", (256, 192)), f"the thumbnail is {shown}, not a 256x192 JPEG")
    say(f"ok: the worker made the thumbnail {derived} of {name}; both on S3, verified")
    upload.image.delete(save=False)
    upload.delete()
    storage.delete(derived)


def row_metadata(alias: str, name: str) -> dict[str, Any]:
    from queued_storage.models import StoredFile

    row = StoredFile.objects.get(alias=alias, name=name)
    return dict(row.metadata or {})


def smoke_scan(worker: ManagedProcess) -> None:
    """The EICAR test file saved through the model ends ``rejected`` with ClamAV's reason, and
    is not in the bucket (its transfer never started)."""
    from botocore.exceptions import ClientError
    from django.core.files.base import ContentFile
    from django.db import transaction

    from gallery.models import Upload
    from queued_storage.models import State

    with transaction.atomic():
        upload = Upload(title="EICAR test file")
        upload.file.save("eicar.txt", ContentFile(EICAR), save=True)
    name = str(upload.file.name)
    storage: Any = upload.file.storage
    row = wait_until("waiting for the scan", settled(storage.alias, name), SMOKE_TIMEOUT, worker)
    check(row.state == State.REJECTED, f"the EICAR test file ended {row.state}: {row.last_error}")
    check("EICAR" in row.last_error, f"rejected for another reason: {row.last_error}")
    try:
        storage.remote.connection.meta.client.head_object(
            Bucket=storage.remote.bucket_name, Key=name
        )
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        check(code in ("404", "NoSuchKey", "NotFound"), f"HEAD of {name} on S3: {code}")
    else:
        raise DemoError(f"the rejected {name} is on S3")
    say(f"ok: the EICAR test file was rejected ({row.last_error}) and is not on S3")
    upload.file.delete(save=False)
    upload.delete()


def smoke_upload_page(worker: ManagedProcess, s3_prefix: str) -> None:
    """The upload page as the browser uses it, through Django's test client (no browser):
    the page carries the widget in tus mode; a tus upload sent in two chunks, resumed from the
    offset ``HEAD`` reports, names the stored file and its status URL on the last chunk; the
    stored name is attached to the library, the status endpoint ends ``remote`` with an
    S3 URL that serves the same bytes, and the library lists the file as served from S3."""
    import requests
    from django.contrib.auth import get_user_model
    from django.contrib.staticfiles import finders
    from django.test import Client

    from gallery.models import Upload

    client = Client(HTTP_HOST=LOOPBACK)
    client.force_login(get_user_model().objects.get(username="admin"))
    page = client.get("/upload/")
    check(page.status_code == 200, f"GET /upload/ answered HTTP {page.status_code}")
    html = page.content.decode()
    check("data-qs-uploader" in html and "queued_storage/uploader.js" in html, "no widget")
    check('data-tus-url="/uploads/tus/"' in html, "the widget is not in tus mode")
    check(finders.find("queued_storage/uploader.js") is not None, "uploader.js is not found")

    data = os.urandom(SMOKE_PAGE_SIZE)
    tus = {"HTTP_TUS_RESUMABLE": "1.0.0"}
    created = client.generic(
        "POST",
        "/uploads/tus/",
        HTTP_UPLOAD_LENGTH=str(len(data)),
        HTTP_UPLOAD_METADATA="filename " + base64.b64encode(b"smoke-page.bin").decode(),
        **tus,
    )
    check(created.status_code == 201, f"tus creation answered {created.status_code}")
    upload_url = created["Location"]
    half = len(data) // 2
    for chunk in (data[:half], data[half:]):
        offset = client.head(upload_url, **tus)["Upload-Offset"]
        sent = client.patch(
            upload_url,
            chunk,
            content_type="application/offset+octet-stream",
            HTTP_UPLOAD_OFFSET=offset,
            **tus,
        )
        check(sent.status_code == 204, f"tus PATCH answered {sent.status_code}: {sent.content!r}")
    check(sent["Upload-Offset"] == str(len(data)), "the tus upload did not end at its length")
    name = unquote(sent["X-Queued-Storage-Name"])
    status_url = sent["X-Queued-Storage-Status-Url"]
    answer = client.get(status_url).json()
    check(answer["state"] in ("pending", "transferring", "remote"), f"state {answer['state']!r}")
    attached = client.post("/attach/", {"name": name})
    check(attached.status_code == 201, f"POST /attach/ answered HTTP {attached.status_code}")
    say(f"ok: uploaded with tus in two chunks, as the upload page does ({name}, {len(data)} bytes)")

    def remote() -> dict[str, Any] | None:
        status: dict[str, Any] = client.get(status_url).json()
        if status.get("state") == "failed":
            raise DemoError(f"the transfer of {name} failed")
        return status if status.get("state") == "remote" else None

    status = wait_until("waiting for the upload's status: remote", remote, SMOKE_TIMEOUT, worker)
    url = str(status["url"])
    check(url.startswith(s3_prefix), f"an S3 URL under {s3_prefix} expected, got {url}")
    with requests.Session() as session:
        session.trust_env = urlsplit(url).hostname != LOOPBACK
        response = session.get(url, timeout=30)
    check(response.content == data, "the S3 copy of the page's upload differs")
    listing = client.get("/").content.decode()
    check(name in listing and "S3" in listing, "the library does not list the file on S3")
    say("ok: the status endpoint says remote; its S3 URL serves the same bytes")

    item = Upload.objects.get(file=name)
    item.file.delete(save=False)
    item.delete()


def smoke_direct_upload(s3_prefix: str) -> None:
    """A direct upload (``/upload/?mode=direct``'s flow, through Django's test client and
    ``requests`` to S3, no browser): start, declare the parts' CRC32s, PUT each to its
    presigned URL, complete; the file is ``remote`` at once, served from S3, and attached."""
    import requests
    from django.contrib.auth import get_user_model
    from django.test import Client

    from gallery.models import Upload

    client = Client(HTTP_HOST=LOOPBACK)
    client.force_login(get_user_model().objects.get(username="admin"))
    page = client.get("/upload/?mode=direct")
    check(page.status_code == 200, f"GET /upload/?mode=direct answered {page.status_code}")
    check('data-mode="direct"' in page.content.decode(), "the widget is not in direct mode")
    data = os.urandom(SMOKE_PAGE_SIZE)
    json = "application/json"
    started = client.post(
        "/uploads/direct/", {"name": "smoke-direct.bin", "size": len(data)}, content_type=json
    )
    check(started.status_code == 201, f"direct start answered {started.status_code}")
    up = started.json()
    size = int(up["part_size"])
    parts = {n + 1: data[i : i + size] for n, i in enumerate(range(0, len(data), size))}
    crcs = {
        n: base64.b64encode(zlib.crc32(p).to_bytes(4, "big")).decode() for n, p in parts.items()
    }
    declared = [{"number": n, "checksum": c} for n, c in crcs.items()]
    signed = client.post(up["parts_url"], {"parts": declared}, content_type=json)
    check(signed.status_code == 200, f"direct parts answered {signed.status_code}")
    with requests.Session() as session:
        for part in signed.json()["parts"]:
            session.trust_env = urlsplit(part["url"]).hostname != LOOPBACK
            sent = session.put(
                part["url"], data=parts[part["number"]], headers=part["headers"], timeout=30
            )
            check(
                sent.status_code == 200, f"the PUT of part {part['number']} got {sent.status_code}"
            )
    done = client.post(up["complete_url"], {}, content_type=json)
    check(done.status_code == 201, f"direct complete answered {done.status_code}: {done.content!r}")
    status = done.json()
    check(status["state"] == "remote", f"state {status['state']!r} after completing")
    url = str(status["url"])
    check(url.startswith(s3_prefix), f"an S3 URL under {s3_prefix} expected, got {url}")
    with requests.Session() as session:
        session.trust_env = urlsplit(url).hostname != LOOPBACK
        check(session.get(url, timeout=30).content == data, "the direct upload's S3 copy differs")
    attached = client.post("/attach/", {"name": up["name"]})
    check(attached.status_code == 201, f"POST /attach/ answered HTTP {attached.status_code}")
    say(f"ok: uploaded directly to S3 and verified ({up['name']}, {len(data)} bytes)")
    item = Upload.objects.get(file=up["name"])
    item.file.delete(save=False)
    item.delete()


def allow_browser_uploads(bucket: str, port: int) -> None:
    """The CORS rule of docs/direct.md on the demo's own bucket (moto), for the site's origins
    (``127.0.0.1`` and ``localhost``): the upload page's direct mode sends the parts from the
    browser to S3."""
    from django.core.files.storage import storages

    s3: Any = storages["s3"]
    from queued_storage.direct import cors_configuration

    origins = [f"http://{LOOPBACK}:{port}", f"http://localhost:{port}"]
    s3.connection.meta.client.put_bucket_cors(
        Bucket=bucket, CORSConfiguration=cors_configuration(origins)
    )


def serve(
    port: int,
    worker: ManagedProcess,
    moto: ManagedProcess | None,
    bucket: str,
    data: Path,
    clamd: str | None,
) -> None:
    web = start_child(
        "web",
        [sys.executable, "manage.py", "runserver", f"{LOOPBACK}:{port}", "--noreload"],
        data,
        echo=True,
    )
    wait_until(
        "waiting for the development server",
        lambda: http_status(port, "/admin/login/") is not None,
        30,
        alive=web,
    )
    s3 = "moto, in memory" if moto is not None else "from DEMO_S3_*"
    scan = f"ClamAV at {clamd}" if clamd else "off (apt-get install clamav-daemon)"
    say(
        "\n"
        f"  site:   http://{LOOPBACK}:{port}/\n"
        f"  admin:  http://{LOOPBACK}:{port}/admin/   user: admin   password: admin"
        "   (a local demo only)\n"
        f"  S3:     bucket {bucket!r} ({s3})\n"
        f"  scan:   {scan}; images get a thumbnail (thumbs/)\n"
        f"  logs:   {data}/worker.log, {data}/web.log\n"
        f"  upload: http://{LOOPBACK}:{port}/upload/   (drop files; watch them move to S3)\n"
        f"          http://{LOOPBACK}:{port}/upload/?mode=direct   (straight to S3)\n"
        "  Press Ctrl-C to stop.\n"
    )
    watched = [child for child in (web, worker, moto) if child is not None]
    while not STOP.wait(0.5):
        for child in watched:
            if not child.running:
                raise DemoError(
                    f"{child.name} exited with status {child.returncode}; its log:\n" + child.tail()
                )
    raise Interrupted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--smoke", action="store_true", help="run the end-to-end check, exit")
    parser.add_argument("--port", type=int, default=None, help=f"web port (default {DEFAULT_PORT})")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    atexit.register(stop_all)
    started = time.monotonic()
    data = Path(os.environ.get("QS_DEMO_DIR") or REPO / ".demo").resolve()
    data.mkdir(parents=True, exist_ok=True)
    os.environ["QS_DEMO_DIR"] = str(data)
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    worker: ManagedProcess | None = None
    try:
        moto: ManagedProcess | None = None
        endpoint = os.environ.get("DEMO_S3_ENDPOINT_URL") or None
        if endpoint is None and not os.environ.get("DEMO_S3_BUCKET"):
            moto, moto_port = start_moto(data)
            endpoint = f"http://{LOOPBACK}:{moto_port}"
            os.environ["DEMO_S3_ENDPOINT_URL"] = endpoint  # for this process and the children
        clamd = scanning(data)
        setup_django()
        migrate_and_admin()
        if moto is not None:
            forget_previous_run()
        checkpoint()
        worker = start_worker(data, echo=not args.smoke)
        if moto is not None:
            wait_until(
                "waiting for the moto S3 server",
                lambda: http_status(moto_port, "/") is not None,
                30,
                alive=moto,
            )
            say(f"ok: moto S3 server on {endpoint}")
        bucket = ensure_bucket()
        wait_worker_ready(worker)

        from django.db import connections

        if args.smoke:
            smoke(worker, endpoint, scanned=clamd is not None)
            connections.close_all()
            stop_all()
            say(f"smoke test passed in {time.monotonic() - started:.1f}s")
            return 0
        connections.close_all()
        port = args.port or DEFAULT_PORT
        if not port_is_free(port):
            busy, port = port, free_port()
            say(f"port {busy} is busy: using {port}")
        if moto is not None:
            allow_browser_uploads(bucket, port)
        serve(port, worker, moto, bucket, data, clamd)
        return 0  # not reached: serve() ends with Interrupted or DemoError
    except Interrupted:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        say("\nstopping ...")
        stop_all()
        say("stopped.")
        return 1 if args.smoke else 0
    except Exception as err:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print(f"FAILED: {type(err).__name__}: {err}", file=sys.stderr)
        if worker is not None:
            print(f"--- last lines of {worker.log_path} ---", file=sys.stderr)
            print(worker.tail(), file=sys.stderr)
        stop_all()
        return 1
    finally:
        stop_all()


if __name__ == "__main__":
    sys.exit(main())
