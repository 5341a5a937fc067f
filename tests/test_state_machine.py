"""The ledger's state machine, walked from its declared table (``ledger.TRANSITIONS``).

Every transition is tried from every state (and from no row at all) on SQLite and on
PostgreSQL, with the row set up so that the transition's other conditions (the lease holder, a
mark, the row as read) hold: only the declared ones change the row, each to its declared state,
and only the announced ones send ``file_state_changed`` (once, from and to the declared
states). The docs' diagram (``docs/index.md``) is drawn from the same table: a test parses it.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone

from queued_storage.ledger import ANY, TRANSITIONS, LeaseResult, Ledger, Row
from queued_storage.models import State, StoredFile
from queued_storage.signals import file_state_changed

pytestmark = pytest.mark.django_db(
    transaction=True, databases=[a for a in ("default", "postgres") if a in settings.DATABASES]
)

ALIAS = "machine"
INDEX = Path(__file__).resolve().parent.parent / "docs" / "index.md"
#: Every state a row can be in before a transition, ``Row.ABSENT`` for no row.
STATES: tuple[str | Row, ...] = (Row.ABSENT, *ANY)
WEEK = datetime.timedelta(days=7)


@dataclass(frozen=True)
class Case:
    """How to try one transition: the row's other fields, so that only its state decides,
    and the call (ledger, file name, the row as read or ``None``)."""

    call: Callable[[Ledger, str, StoredFile | None], Any]
    row: dict[str, Any] = field(default_factory=dict)
    #: The method returns whether it happened (``None``-returning ones are judged by the row).
    reports: bool = True


def _read(row: StoredFile | None, name: str) -> StoredFile:
    """The row as a caller read it; for no row, one that was never saved (pk ``None``)."""
    return row if row is not None else StoredFile(alias=ALIAS, name=name, state=State.PENDING)


NOW = timezone.now
CASES: dict[str, Case] = {
    "saved": Case(lambda ledger, name, row: ledger.saved(name, "h", 3)),
    "reserve": Case(lambda ledger, name, row: ledger.reserve(name, "h")),
    "seed_remote": Case(lambda ledger, name, row: ledger.seed_remote([(name, 3, "etag")])),
    "forget": Case(lambda ledger, name, row: ledger.forget(name)),
    "retry": Case(lambda ledger, name, row: ledger.retry(name)),
    "refused": Case(lambda ledger, name, row: ledger.refused(name)),
    "lease": Case(lambda ledger, name, row: ledger.lease(name, "w2", 60)),
    "renew": Case(lambda ledger, name, row: ledger.renew(name, "w", 60, 5, 10)),
    "record_upload": Case(
        lambda ledger, name, row: ledger.record_upload(
            name, "w", upload_id="u2", part_size=5, source="s"
        )
    ),
    "record_parts": Case(lambda ledger, name, row: ledger.record_parts(name, "w", [[1, "e"]])),
    "clear_upload": Case(lambda ledger, name, row: ledger.clear_upload(name), reports=False),
    "remote": Case(
        lambda ledger, name, row: ledger.remote(name, "w", size=3, checksum="c", algorithm="md5")
    ),
    "drop_local": Case(lambda ledger, name, row: ledger.drop_local(name, 3, lambda _: None)),
    "local_missing": Case(lambda ledger, name, row: ledger.local_missing(name), reports=False),
    "retry_later": Case(lambda ledger, name, row: ledger.retry_later(name, "w", "e")),
    "fail": Case(lambda ledger, name, row: ledger.fail(name, "w", "e")),
    "processed": Case(lambda ledger, name, row: ledger.processed(name, "w", {"k": 1})),
    "reject": Case(lambda ledger, name, row: ledger.reject(name, "w", "a virus")),
    "release": Case(lambda ledger, name, row: ledger.release(name)),
    "take_back": Case(lambda ledger, name, row: ledger.take_back(_read(row, name), NOW())),
    "claim": Case(lambda ledger, name, row: ledger.claim(_read(row, name), NOW())),
    "claim_refused": Case(
        lambda ledger, name, row: ledger.claim_refused(_read(row, name), NOW()),
        row={"dispatch_refused": timezone.now() - WEEK},
    ),
    "claim_due": Case(
        lambda ledger, name, row: ledger.claim_due(_read(row, name), NOW()),
        row={"retry_at": timezone.now() - WEEK},
    ),
    # the claim it undoes left the row's clock at ``now``: the row's own here
    "unclaim": Case(
        lambda ledger, name, row: ledger.unclaim(_read(row, name), _read(row, name).updated),
        reports=False,
    ),
    "retry_failed": Case(lambda ledger, name, row: ledger.retry_failed(_read(row, name), NOW())),
    "lost": Case(lambda ledger, name, row: ledger.lost(_read(row, name), "gone", NOW())),
    "remote_lost": Case(
        lambda ledger, name, row: ledger.remote_lost(
            _read(row, name), "gone", NOW(), local_exists=True
        )
    ),
    "give_up": Case(lambda ledger, name, row: ledger.give_up(_read(row, name), "late", NOW())),
    "finish_save": Case(
        lambda ledger, name, row: ledger.finish_save(_read(row, name), 3, NOW()),
        row={"size": None, "local_exists": False},
    ),
    "drop_reservation": Case(
        lambda ledger, name, row: ledger.drop_reservation(_read(row, name)),
        row={"size": None, "local_exists": False},
    ),
    "direct_reserve": Case(
        lambda ledger, name, row: ledger.direct_reserve(name, size=3, part_size=5, owner="o")
    ),
    "direct_opened": Case(
        lambda ledger, name, row: ledger.direct_opened(name, "u2"), row={"upload_id": ""}
    ),
    "direct_declare": Case(
        lambda ledger, name, row: ledger.direct_declare(_read(row, name), [[1, "", "c", 3]])
    ),
    "direct_claim": Case(lambda ledger, name, row: ledger.direct_claim(name, "w2", 60)),
    "direct_unclaim": Case(lambda ledger, name, row: ledger.direct_unclaim(name, "w")),
    "direct_remote": Case(
        lambda ledger, name, row: ledger.direct_remote(
            name, "w", size=3, checksum="c", algorithm="a"
        )
    ),
    "direct_refused": Case(lambda ledger, name, row: ledger.direct_refused(name, "w")),
    "direct_cancel": Case(lambda ledger, name, row: ledger.direct_cancel(name, "w")),
    "direct_expired": Case(lambda ledger, name, row: ledger.direct_expired(name, "w")),
}


@pytest.fixture
def announced() -> Iterator[list[tuple[str, str, State | None, State | None]]]:
    sent: list[tuple[str, str, State | None, State | None]] = []

    def receiver(**kwargs: Any) -> None:
        sent.append(
            (kwargs["transition"], kwargs["name"], kwargs["old_state"], kwargs["new_state"])
        )

    file_state_changed.connect(receiver, sender=Ledger, dispatch_uid="test-state-machine")
    yield sent
    file_state_changed.disconnect(sender=Ledger, dispatch_uid="test-state-machine")


def _make(db: str, name: str, state: str | Row, extra: dict[str, Any]) -> StoredFile | None:
    """A row in *state* whose other fields let any transition's own conditions hold: a lease
    of ``"w"`` that expired, a local copy of 3 bytes, an open upload."""
    if state is Row.ABSENT:
        return None
    fields: dict[str, Any] = {
        "state": state,
        "host": "h",
        "size": 3,
        "local_exists": True,
        "lease_owner": "w",
        "lease_expires": timezone.now() - WEEK,
        "upload_id": "u1",
        **extra,
    }
    row: StoredFile = StoredFile.objects.using(db).create(alias=ALIAS, name=name, **fields)
    return row


def _snapshot(db: str, name: str) -> dict[str, Any] | None:
    return StoredFile.objects.using(db).filter(alias=ALIAS, name=name).values().first()


def _as_state(value: str | Row) -> State | None:
    return State(value) if isinstance(value, str) else None


def test_every_transition_has_a_case_and_a_method_of_its_name() -> None:
    assert set(CASES) == set(TRANSITIONS)
    assert all(callable(getattr(Ledger, name, None)) for name in TRANSITIONS)


@pytest.mark.parametrize("transition", list(TRANSITIONS))
def test_only_the_declared_transitions_change_a_row_and_to_the_declared_state(
    ledger_db: str, transition: str, announced: list[tuple[str, str, State | None, State | None]]
) -> None:
    declared, case = TRANSITIONS[transition], CASES[transition]
    ledger = Ledger(ALIAS)
    wrong: list[str] = []
    for state in STATES:
        name = f"{transition}-{state.value if isinstance(state, Row) else state}.bin"
        row = _make(ledger_db, name, state, case.row)
        before = _snapshot(ledger_db, name)
        announced.clear()
        result = case.call(ledger, name, row)
        after = _snapshot(ledger_db, name)
        happened = bool(result.acquired if isinstance(result, LeaseResult) else result)
        allowed = state in declared.sources
        new = Row.ABSENT if after is None else after["state"]
        if allowed:
            expected = declared.enters(state)
            if after == before or new != expected:
                wrong.append(f"from {state}: expected {expected}, the row is {after}")
        elif after != before:
            wrong.append(f"from {state}: not declared, yet the row changed to {after}")
        if case.reports and happened != allowed:
            wrong.append(f"from {state}: the method answered {result!r}")
        signals = (
            [(transition, name, _as_state(state), _as_state(declared.enters(state)))]
            if allowed and declared.announced
            else []
        )
        if announced != signals:
            wrong.append(f"from {state}: announced {announced}, expected {signals}")
    assert wrong == []


def test_the_lease_of_a_transferring_row_is_taken_only_when_it_expired(ledger_db: str) -> None:
    ledger = Ledger(ALIAS)
    row = _make(ledger_db, "live.bin", State.TRANSFERRING, {"lease_expires": timezone.now() + WEEK})
    assert row is not None
    assert ledger.lease("live.bin", "w2", 60) == LeaseResult(acquired=False, row=row)


def test_a_row_read_in_a_state_the_transition_may_not_leave_is_not_written(ledger_db: str) -> None:
    # The reconcile pass read the row ``remote``: ``take_back`` leaves only ``transferring``,
    # and does not even match the row as read.
    row = _make(ledger_db, "read.bin", State.REMOTE, {})
    assert row is not None
    before = _snapshot(ledger_db, "read.bin")
    assert not Ledger(ALIAS).take_back(row, timezone.now())
    assert _snapshot(ledger_db, "read.bin") == before


# -- the diagram in the docs -------------------------------------------------------------------
_EDGE = re.compile(r"^\s*(\[\*\]|\w+)\s*-->\s*(\[\*\]|\w+)\s*:\s*(.+?)\s*$")


def _mermaid(path: Path) -> str:
    blocks = re.findall(r"^```mermaid\n(.*?)^```", path.read_text(encoding="utf-8"), re.S | re.M)
    assert len(blocks) == 1, f"{path.name}: expected one mermaid diagram, found {len(blocks)}"
    return str(blocks[0])


def _node(word: str) -> str | Row:
    return Row.ABSENT if word == "[*]" else word


def test_the_diagram_in_the_docs_draws_exactly_the_transitions_that_are_announced() -> None:
    drawn = set()
    for line in _mermaid(INDEX).splitlines():
        match = _EDGE.match(line)
        if match:
            source, target, labels = match.groups()
            for label in labels.split(","):
                drawn.add((_node(source), _node(target), label.strip()))
    declared = {
        (source, t.enters(source), t.name)
        for t in TRANSITIONS.values()
        if t.announced
        for source in t.sources
    }
    assert drawn == declared


def test_the_docs_list_the_writes_that_keep_the_state_with_their_states() -> None:
    text = INDEX.read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+)` \| ((?:`\w+`(?:, )?)+|any) \|", text, re.M)
    listed = {name: tuple(re.findall(r"`(\w+)`", states)) or ANY for name, states in rows}
    declared = {t.name: t.sources for t in TRANSITIONS.values() if t.target is Row.SAME}
    assert listed == declared
