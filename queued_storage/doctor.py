"""``manage.py queued_storage doctor``: can this host take files and ship them?

Each check gives one :class:`Check` (one line of the command): ``ok``, ``warn`` or ``fail``,
what was found, and for a problem the setting or command that fixes it. Every network
question has a short deadline (``timeout``), so that a black-holed S3 endpoint or broker
makes a failing line, not a hanging command:

* the ledger's table is migrated (its database answers); this host's clock agrees with the
  database's, which measures leases, overdue times and retry budgets (a warning beyond a
  quarter of ``QUEUED_STORAGE_LEASE_TIMEOUT``, a failure beyond all of it);
* each staging directory is writable (a file written, flushed and removed), its free space;
* the state cache is shared between processes (not ``LocMemCache``/``DummyCache``) and
  answers (a key written, read back and deleted);
* each remote storage is reachable, its bucket exists, and a probe object is written, read
  back and deleted; the clock skew against the server's ``Date`` header (S3 refuses requests
  signed more than 15 minutes off its clock);
* a Celery app is configured (not Celery's fallback ``default`` app), its broker answers;
* at least one worker consumes each queue the storages route transfers to
  (``inspect().active_queues()``);
* the reconcile pass ran on this host recently (:func:`queued_storage.reconcile.last_run`).
"""

from __future__ import annotations

import datetime
import functools
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, TypeVar

from botocore.exceptions import NoCredentialsError, PartialCredentialsError
from celery import current_app
from django.conf import settings as django_settings
from django.core.cache import caches
from django.core.files.base import ContentFile
from django.db import connections
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from queued_storage import clock, tally
from queued_storage._s3.client import is_s3
from queued_storage._s3.probe import Probe, ProbeFailed, probe
from queued_storage.conf import settings
from queued_storage.construction import is_alias
from queued_storage.dispatch import redact, routed_queue
from queued_storage.models import StoredFile
from queued_storage.names import DOCTOR_DIRNAME
from queued_storage.operations import human_age, human_bytes
from queued_storage.queries import UNFINISHED
from queued_storage.reconcile import last_run
from queued_storage.state import cache_key
from queued_storage.storage import QueuedStorage

if TYPE_CHECKING:
    from celery import Celery
    from storages.backends.s3 import S3Storage

__all__ = ["FAIL", "OK", "WARN", "Check", "run"]

OK, WARN, FAIL = "ok", "warn", "fail"

#: Clock skew (seconds) beyond which the line warns, and beyond which S3 refuses requests.
SKEW_WARN = 30.0
SKEW_FAIL = 900.0

#: Skew against the database's clock, as a fraction of ``QUEUED_STORAGE_LEASE_TIMEOUT``,
#: beyond which the line warns, and beyond which it fails.
DATABASE_SKEW_WARN = 0.25
DATABASE_SKEW_FAIL = 1.0

_T = TypeVar("_T")

_RECONCILE_FIX = (
    "schedule the pass: the Celery beat task queued_storage.tasks.reconcile, or cron "
    "'python manage.py queued_storage reconcile' every few minutes"
)


@dataclass(frozen=True)
class Check:
    """One line of the doctor: *check* is the kind (``ledger``, ``local``, ``cache``,
    ``remote``, ``clock``, ``celery``, ``broker``, ``workers``, ``reconcile``)."""

    check: str
    subject: str
    status: str
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def line(self) -> str:
        text = f"{self.status.upper():<4}  {self.check:<9}  {self.subject}: {self.detail}"
        if self.fix and self.status != OK:
            text += f"  -> fix: {self.fix}"
        return text


def within(seconds: float, function: Callable[[], _T]) -> _T:
    """*function*'s result, or :class:`TimeoutError` after *seconds* (it runs in a daemon
    thread, which a hanging network call cannot hold back)."""
    answer: list[_T] = []
    failure: list[BaseException] = []
    done = threading.Event()

    def call() -> None:
        try:
            answer.append(function())
        except BaseException as err:  # handed to the caller
            failure.append(err)
        finally:
            done.set()

    threading.Thread(target=call, name="queued-storage-doctor", daemon=True).start()
    if not done.wait(seconds):
        raise TimeoutError(f"no answer within {seconds:g} s")
    if failure:
        raise failure[0]
    return answer[0]


def _error(err: BaseException) -> str:
    return redact(f"{type(err).__name__}: {err}")


def _aliases(storages: Sequence[QueuedStorage]) -> str:
    return ", ".join(s.alias for s in storages)


def _option(spec: str, option: str) -> str:
    """Where the user sets *option* of the storage *spec* (a STORAGES alias or dotted path)."""
    if is_alias(spec):
        return f"STORAGES[{spec!r}]['OPTIONS'][{option!r}]"
    return f"the {option!r} of the QueuedStorage's remote_options"


# -- the ledger ------------------------------------------------------------------------------
def check_ledger() -> list[Check]:
    db = StoredFile.db()
    subject = f"database {db!r}"
    try:
        executor = MigrationExecutor(connections[db])
        leaves = [key for key in executor.loader.graph.leaf_nodes() if key[0] == "queued_storage"]
        plan = executor.migration_plan(leaves)
    except Exception as err:
        fix = f"DATABASES[{db!r}] (or QUEUED_STORAGE_DATABASE)"
        return [Check("ledger", subject, FAIL, f"cannot read it ({_error(err)})", fix)]
    missing = [m.name for m, _ in plan if m.app_label == "queued_storage"]
    if missing:
        detail = f"{len(missing)} migration(s) of queued_storage not applied: {', '.join(missing)}"
        return [Check("ledger", subject, FAIL, detail, "python manage.py migrate queued_storage")]
    table = StoredFile._meta.db_table
    return [Check("ledger", subject, OK, f"table {table} migrated ({leaves[0][1]})")]


def check_database_clock() -> Check:
    """This host's clock against the database's (invariant 13: the database's clock measures
    leases, overdue times and retry budgets; this host's still dates what it writes itself,
    a save's row for one, and signs its S3 requests). The host's time is taken halfway
    through the query, whose round trip bounds the error."""
    db = StoredFile.db()
    subject = f"database {db!r}"
    try:
        before = time.time()
        database = clock.read(db).timestamp()
        after = time.time()
    except Exception as err:
        return Check("clock", subject, FAIL, f"cannot read its time ({_error(err)})")
    skew = (before + after) / 2 - database
    lease = settings.LEASE_TIMEOUT
    side = "ahead of" if skew > 0 else "behind"
    detail = (
        f"this host's clock is {abs(skew):.1f} s {side} the database's, which measures "
        f"leases (to within {(after - before) / 2:.3f} s)"
    )
    fix = "synchronise the clocks of this host and the database (NTP: chrony or systemd-timesyncd)"
    if abs(skew) > DATABASE_SKEW_FAIL * lease:
        detail += f", more than QUEUED_STORAGE_LEASE_TIMEOUT ({lease:g} s)"
        return Check("clock", subject, FAIL, detail, fix)
    if abs(skew) > DATABASE_SKEW_WARN * lease:
        detail += (
            f", more than {DATABASE_SKEW_WARN:g} of QUEUED_STORAGE_LEASE_TIMEOUT "
            f"({DATABASE_SKEW_WARN * lease:g} s)"
        )
        return Check("clock", subject, WARN, detail, fix)
    return Check("clock", subject, OK, detail)


# -- staging ---------------------------------------------------------------------------------
def check_local(storages: Sequence[QueuedStorage]) -> list[Check]:
    roots: dict[str, list[QueuedStorage]] = {}
    found: list[Check] = []
    for storage in storages:
        try:
            roots.setdefault(os.path.realpath(storage.local.path("")), []).append(storage)
        except Exception as err:
            fix = "stage on a filesystem storage (check queued_storage.E003)"
            found.append(Check("local", storage.alias, FAIL, f"no path ({_error(err)})", fix))
    try:
        waiting = StoredFile.waiting_bytes(settings.HOST)
    except Exception:  # no ledger yet: the ledger line says so
        waiting = 0
    for root, sharing in sorted(roots.items()):
        subject = f"{root} ({_aliases(sharing)})"
        fix = f"make {root} writable by this user, or change {_local_option(sharing[0])}"
        try:
            os.makedirs(root, exist_ok=True)  # what the first save would do
            fd, path = tempfile.mkstemp(dir=root, prefix=f"{DOCTOR_DIRNAME}-")
            try:
                os.write(fd, b"queued_storage doctor")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(path)
            free = shutil.disk_usage(root).free
        except OSError as err:
            found.append(Check("local", subject, FAIL, f"not writable ({_error(err)})", fix))
            continue
        detail = f"writable, {human_bytes(free)} free"
        budget = settings.STAGING_BUDGET
        if budget is not None and free < budget - waiting:
            detail += (
                f", less than the {human_bytes(budget - waiting)} the staging budget still "
                "allows: the disk fills first"
            )
            fix = "free space there, or lower QUEUED_STORAGE_STAGING_BUDGET"
            found.append(Check("local", subject, WARN, detail, fix))
            continue
        found.append(Check("local", subject, OK, detail))
    return found


def _local_option(storage: QueuedStorage) -> str:
    spec = storage.local_path
    if is_alias(spec):
        return f"STORAGES[{spec!r}]['OPTIONS']['location']"
    return "the QueuedStorage's local_options['location']"


# -- the state cache -------------------------------------------------------------------------
def _eager() -> bool:
    return bool(
        getattr(django_settings, "CELERY_TASK_ALWAYS_EAGER", False)
        or current_app.conf.task_always_eager
    )


def check_cache(timeout: float) -> list[Check]:
    alias = settings.CACHE
    subject = f"CACHES[{alias!r}]"
    conf = getattr(django_settings, "CACHES", {}).get(alias)
    if conf is None:
        return [Check("cache", subject, FAIL, "no such cache", "QUEUED_STORAGE_CACHE")]
    backend = str(conf.get("BACKEND", "")).rsplit(".", 1)[-1]
    fix = (
        f"point QUEUED_STORAGE_CACHE (or CACHES[{alias!r}]) at a cache every process shares: "
        "Redis, Memcached, database or file-based"
    )
    if backend in ("LocMemCache", "DummyCache") and not _eager():
        detail = f"{backend} is not shared: workers' state changes stay unseen by web processes"
        return [Check("cache", subject, FAIL, detail, fix)]
    key = cache_key(f"{settings.CACHE_PREFIX}:doctor", settings.HOST, uuid.uuid4().hex)

    def round_trip() -> bool:
        cache = caches[alias]
        cache.set(key, "ok", 60)
        try:
            return bool(cache.get(key) == "ok")
        finally:
            cache.delete(key)

    try:
        if not within(timeout, round_trip):
            return [Check("cache", subject, FAIL, f"{backend} does not keep a value", fix)]
    except Exception as err:
        detail = f"{backend} does not answer ({_error(err)})"
        return [Check("cache", subject, FAIL, detail, f"start the cache, or fix CACHES[{alias!r}]")]
    return [Check("cache", subject, OK, f"{backend}, shared, a key written and read back")]


# -- remote storages -------------------------------------------------------------------------
def _probe_name() -> str:
    return f"{DOCTOR_DIRNAME}/{settings.HOST}-{uuid.uuid4().hex}.txt"


def _skew(server: datetime.datetime | None, subject: str) -> Check:
    if server is None:
        return Check("clock", subject, WARN, "the remote sent no Date header: skew unknown")
    skew = (datetime.datetime.now(datetime.timezone.utc) - server).total_seconds()
    side = "ahead of" if skew > 0 else "behind"
    detail = f"this host's clock is {abs(skew):.0f} s {side} the remote's"
    fix = "synchronise this host's clock (NTP: chrony or systemd-timesyncd)"
    if abs(skew) > SKEW_FAIL:
        return Check(
            "clock", subject, FAIL, detail + ": S3 refuses requests signed so far off", fix
        )
    if abs(skew) > SKEW_WARN:
        return Check("clock", subject, WARN, detail, fix)
    return Check("clock", subject, OK, detail + " (1 s resolution)")


def _probe_failed(failure: ProbeFailed, spec: str, subject: str, timeout: float) -> Check:
    where = f"{redact(failure.endpoint)} bucket {failure.bucket!r}"
    code = failure.code
    if isinstance(failure.error, (NoCredentialsError, PartialCredentialsError)):
        found = "incomplete" if isinstance(failure.error, PartialCredentialsError) else "missing"
        detail = f"{where}: the credentials are {found} ({_error(failure.error)})"
        fix = (
            f"set {_option(spec, 'access_key')} and 'secret_key' (from the environment, "
            "e.g. os.environ['AWS_ACCESS_KEY_ID'] and os.environ['AWS_SECRET_ACCESS_KEY']), "
            "or export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY to every process, or give "
            "the host an IAM role or an AWS profile (AWS_PROFILE)"
        )
    elif failure.step == "reach":
        detail = f"cannot reach {where} within {timeout:g} s ({_error(failure.error)})"
        fix = f"check the network path to the endpoint, or {_option(spec, 'endpoint_url')}"
    elif code in ("404", "NoSuchBucket"):
        detail = f"{where}: the bucket does not exist; the files sent to it wait (pending)"
        fix = (
            "create the bucket (the waiting files then go on their own), or fix "
            f"{_option(spec, 'bucket_name')}"
        )
    elif code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"):
        detail = f"{where}: the credentials are refused ({code})"
        fix = f"fix {_option(spec, 'access_key')}/'secret_key' (or the host's IAM role)"
    elif code == "RequestTimeTooSkewed":
        detail = f"{where}: the request was refused, this host's clock is too far off"
        fix = "synchronise this host's clock (NTP: chrony or systemd-timesyncd)"
    elif code in ("403", "AccessDenied"):
        action = {
            "bucket": "s3:ListBucket",
            "write": "s3:PutObject",
            "read": "s3:GetObject",
            "delete": "s3:DeleteObject",
        }.get(failure.step, "access")
        detail = f"{where}: access denied at the {failure.step} step"
        fix = f"give the storage's credentials {action} on the bucket"
    else:
        detail = f"{where}: the {failure.step} step failed ({_error(failure.error)})"
        fix = f"see the error; check {_option(spec, 'endpoint_url')} and the storage's options"
    return Check("remote", subject, FAIL, detail, fix)


def _s3_round_trip(remote: S3Storage, timeout: float) -> Probe:
    return probe(remote, _probe_name(), timeout=timeout)


def _generic_round_trip(storage: QueuedStorage) -> str:
    remote = storage.remote
    body = uuid.uuid4().hex.encode()
    name = remote.save(_probe_name(), ContentFile(body))
    try:
        with remote.open(name, "rb") as fh:
            if fh.read() != body:
                raise ValueError("the probe object read back differs")
    finally:
        remote.delete(name)
    return name


def check_remotes(storages: Sequence[QueuedStorage], timeout: float) -> list[Check]:
    remotes: dict[str, list[QueuedStorage]] = {}
    for storage in storages:
        remotes.setdefault(storage.remote_path, []).append(storage)
    found: list[Check] = []
    for spec, sharing in sorted(remotes.items()):
        subject = f"{spec} ({_aliases(sharing)})"
        remote = sharing[0].remote
        began = time.monotonic()
        if is_s3(remote):
            try:
                done = within(timeout * 4 + 1, functools.partial(_s3_round_trip, remote, timeout))
            except ProbeFailed as failure:
                found.append(_probe_failed(failure, spec, subject, timeout))
                if failure.server_date is not None:
                    found.append(_skew(failure.server_date, subject))
                continue
            except Exception as err:
                detail = f"no answer ({_error(err)})"
                fix = f"check the network path to the endpoint, or {_option(spec, 'endpoint_url')}"
                found.append(Check("remote", subject, FAIL, detail, fix))
                continue
            detail = (
                f"{redact(done.endpoint)} bucket {done.bucket!r}: reachable, a probe object "
                f"written, read back and deleted in {done.seconds:.2f} s"
            )
            found.append(Check("remote", subject, OK, detail))
            found.append(_skew(done.server_date, subject))
            continue
        try:
            within(timeout, functools.partial(_generic_round_trip, sharing[0]))
        except Exception as err:
            detail = f"{type(remote).__name__}: the probe object failed ({_error(err)})"
            found.append(Check("remote", subject, FAIL, detail, f"check the storage {spec!r}"))
            continue
        seconds = time.monotonic() - began
        detail = (
            f"{type(remote).__name__}: a probe object written, read back and deleted in "
            f"{seconds:.2f} s"
        )
        found.append(Check("remote", subject, OK, detail))
    return found


# -- Celery ----------------------------------------------------------------------------------
def check_celery_app() -> tuple[list[Check], Celery | None]:
    """The app transfers are sent with, and whether it is the project's own."""
    app = current_app._get_current_object()
    fix = (
        "define your project's Celery app (proj/celery.py) and import it in the project "
        "package's __init__.py, as Celery's Django guide does: app = Celery('proj'); "
        "app.config_from_object('django.conf:settings', namespace='CELERY'); "
        "app.autodiscover_tasks()"
    )
    if app.main in (None, "default") and not app.fixups:  # Celery's fallback app
        detail = "no Celery app is configured: transfers would go to Celery's fallback app"
        return [Check("celery", "app", FAIL, detail, fix)], None
    detail = f"app {app.main!r}"
    if _eager():
        detail += " runs tasks eagerly (task_always_eager): transfers run inside the request"
        return [Check("celery", "app", WARN, detail, "CELERY_TASK_ALWAYS_EAGER = False")], app
    return [Check("celery", "app", OK, detail)], app


def check_broker(app: Celery, timeout: float) -> list[Check]:
    connection = app.connection_for_write(connect_timeout=timeout)
    subject = redact(connection.as_uri(mask=""))  # no password, not even a mask
    try:
        within(timeout + 1, lambda: connection.ensure_connection(max_retries=0, timeout=timeout))
    except Exception as err:
        detail = f"does not answer within {timeout:g} s ({_error(err)})"
        fix = "start the broker, or fix CELERY_BROKER_URL (the app's broker_url)"
        return [Check("broker", subject, FAIL, detail, fix)]
    finally:
        connection.release()
    found = [Check("broker", subject, OK, "answers")]
    if connection.transport.driver_type == "amqp":
        found.append(_check_prefetch(app, subject))
    return found


def _check_prefetch(app: Celery, subject: str) -> Check:
    """RabbitMQ: a transfer's delivery is acknowledged when it starts, but one a worker
    prefetched while its pool processes were busy waits unacknowledged, and RabbitMQ closes
    the channel of a delivery older than its ``consumer_timeout`` (not readable over AMQP)."""
    multiplier = app.conf.worker_prefetch_multiplier
    detail = (
        f"prefetch multiplier {multiplier}: transfers are acknowledged when they start and "
        "retries wait in the ledger, so consumer_timeout bounds only deliveries prefetched "
        "while every pool process is busy"
    )
    if multiplier == 1:
        return Check("broker", f"{subject} prefetch", OK, detail)
    fix = "CELERY_WORKER_PREFETCH_MULTIPLIER = 1 for the workers of big files"
    return Check("broker", f"{subject} prefetch", WARN, detail, fix)


def _other_hosts_waiting(storages: Sequence[QueuedStorage]) -> dict[str, tuple[str, int]]:
    """The queues of other hosts (per-host queues) that hold files not yet ``remote`` of these
    storages: ``{queue: (host, files)}``, from the kept tally."""
    waiting: dict[str, tuple[str, int]] = {}
    by_alias = {storage.alias: storage for storage in storages}
    for group in tally.read():
        storage = by_alias.get(group.alias)
        if storage is None or group.state not in UNFINISHED or group.files <= 0:
            continue
        if not group.host or group.host == settings.HOST:
            continue
        queue = storage.queue_for(group.host)
        if not queue or queue == storage.queue_for(settings.HOST):
            continue  # one queue for every host: this host's line covers it
        host, files = waiting.get(queue, (group.host, 0))
        waiting[queue] = (host, files + group.files)
    return waiting


def check_workers(app: Celery, storages: Sequence[QueuedStorage], timeout: float) -> list[Check]:
    """Every queue this host's files go to has a worker (FAIL otherwise), and so has every
    other host's queue that holds waiting files (WARN: that host's worker is down)."""
    queues: dict[str, list[QueuedStorage]] = {}
    for storage in storages:
        queues.setdefault(routed_queue(app, storage), []).append(storage)
    others = _other_hosts_waiting(storages)
    wait = min(timeout, 2.0)
    # A connection of its own, not one of the app's pool, which may hold a dead one.
    connection = app.connection_for_write(connect_timeout=timeout)

    def ask() -> dict[str, list[dict[str, object]]] | None:
        # {worker: [{"name": queue, ...}, ...]}, or None when no worker answered
        answer: dict[str, list[dict[str, object]]] | None = app.control.inspect(
            timeout=wait, connection=connection
        ).active_queues()
        return answer

    try:
        replies = within(wait + timeout, ask)
    except Exception as err:
        detail = f"could not ask the workers ({_error(err)})"
        return [Check("workers", "", FAIL, detail, "check the broker (line above)")]
    finally:
        connection.release()
    consumers: dict[str, list[str]] = {}
    for worker, consumed in sorted((replies or {}).items()):
        for entry in consumed or []:
            consumers.setdefault(str(entry.get("name")), []).append(worker)
    # (queue, subject, status when no worker consumes it, detail, fix)
    wanted = [
        (
            queue,
            f"queue {queue!r} ({_aliases(sharing)})",
            FAIL,
            f"no worker consumes it ({len(replies)} worker(s) answered, for other queues)"
            if replies
            else f"no worker consumes it (none answered within {wait:g} s)",
            f"start one: celery -A <your project> worker -Q {queue}",
        )
        for queue, sharing in sorted(queues.items())
    ] + [
        (
            queue,
            f"queue {queue!r} (host {host})",
            WARN,
            f"no worker consumes it; {files} file(s) of host {host} wait for it",
            f"start the worker on host {host}: celery -A <your project> worker -Q {queue}",
        )
        for queue, (host, files) in sorted(others.items())
    ]
    found: list[Check] = []
    for queue, subject, status, detail, fix in wanted:
        workers = consumers.get(queue)
        if workers:
            found.append(Check("workers", subject, OK, f"consumed by {', '.join(workers)}"))
        else:
            found.append(Check("workers", subject, status, detail, fix))
    return found


# -- the reconcile pass ----------------------------------------------------------------------
def check_reconcile(within_seconds: float) -> list[Check]:
    subject = f"host {settings.HOST}"
    record = last_run(settings.HOST)
    now = timezone.now()
    if record is None:
        detail = "no pass recorded on this host (never ran, or the cache was cleared)"
        latest = last_run("")
        if latest is not None:
            ago = human_age((now - latest["at"]).total_seconds())
            detail += f"; the latest recorded pass ran on host {latest['host']} {ago} ago"
        return [Check("reconcile", subject, FAIL, detail, _RECONCILE_FIX)]
    age = (now - record["at"]).total_seconds()
    detail = f"last pass {human_age(age)} ago"
    if age > within_seconds:
        detail += f", more than {human_age(within_seconds)}"
        return [Check("reconcile", subject, FAIL, detail, _RECONCILE_FIX)]
    if not record.get("ok", True):
        detail += ", and it found data loss"
        return [
            Check("reconcile", subject, FAIL, detail, "python manage.py queued_storage reconcile")
        ]
    return [Check("reconcile", subject, OK, detail + ", ok")]


# -- all of them -----------------------------------------------------------------------------
def run(
    storages: Sequence[QueuedStorage], *, timeout: float = 5.0, reconcile_within: float = 3600.0
) -> list[Check]:
    """Every check, in the order a file travels; see the module docstring."""
    if not storages:
        fix = (
            "add one to STORAGES: {'BACKEND': 'queued_storage.storage.QueuedStorage', "
            "'OPTIONS': {'local': <a FileSystemStorage alias>, 'remote': <an S3Storage alias>}}"
        )
        return [Check("storages", "", FAIL, "no QueuedStorage is configured", fix)]
    found = check_ledger()
    if found[0].status == OK:
        found.append(check_database_clock())
    found += check_local(storages)
    found += check_cache(timeout)
    found += check_remotes(storages, timeout)
    app_checks, app = check_celery_app()
    found += app_checks
    if app is not None:
        broker = check_broker(app, timeout)
        found += broker
        if broker[0].status == OK:
            found += check_workers(app, storages, timeout)
        else:
            fix = "start the broker first"
            found.append(Check("workers", "", FAIL, "not asked: the broker does not answer", fix))
    found += check_reconcile(reconcile_within)
    return found
