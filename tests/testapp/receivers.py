"""A ``file_state_changed`` receiver connected in every process of the suite (this module is
imported with the test app's models), the Celery workers' included: it records the signals of
the ``monitored*`` storages' files in a Redis list, which ``tests/test_monitoring.py`` reads,
each with the number of database connections its process had opened by then."""

from __future__ import annotations

import json
import os
from typing import Any

from django.conf import settings
from django.db.backends.signals import connection_created
from django.dispatch import receiver

from queued_storage.signals import file_state_changed

#: The Redis list (database 3) of the recorded signals, one JSON object each.
RECORDED = "qs-test:file-state-changed"


#: Database connections this process has opened (``connection_created``), and in which process.
_opened = {"pid": 0, "count": 0}


@receiver(connection_created, dispatch_uid="tests.testapp.receivers.opened")
def count(sender: Any, **kwargs: Any) -> None:
    if _opened["pid"] != os.getpid():
        _opened.update(pid=os.getpid(), count=0)
    _opened["count"] += 1


def redis_url() -> str | None:
    url = getattr(settings, "REDIS_URL", None)
    return None if url is None else f"{url}/3"


@receiver(file_state_changed, dispatch_uid="tests.testapp.receivers")
def record(sender: Any, *, alias: str, name: str, **kwargs: Any) -> None:
    url = redis_url()
    if url is None or not alias.startswith("monitored"):
        return
    import redis

    event = {
        "alias": alias,
        "name": name,
        "old_state": kwargs["old_state"],
        "new_state": kwargs["new_state"],
        "transition": kwargs["transition"],
        "pid": os.getpid(),
        "connections_opened": _opened["count"] if _opened["pid"] == os.getpid() else 0,
    }
    client = redis.Redis.from_url(url)
    try:
        client.rpush(RECORDED, json.dumps(event))
    finally:
        client.close()
