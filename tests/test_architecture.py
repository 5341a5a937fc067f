"""The package's layout rules (DESIGN.md, "one owner per concern"), read from the source.

Each rule is checked on the syntax tree of every module of ``queued_storage`` (migrations
aside), so a change that breaks one fails here with the module and line that broke it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "queued_storage"

#: Modules that import ``queued_storage.apps``-time things lazily by Django's own design:
#: ``AppConfig.ready()`` registers the system checks once the models are loaded.
_READY_IMPORTS = {
    ("queued_storage.apps", "queued_storage.checks"),
    # Only with QUEUED_STORAGE_METRICS: it needs the optional prometheus-client.
    ("queued_storage.apps", "queued_storage.metrics"),
}


@cache
def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = ast.parse(path.read_text(), str(path))
    return found


def imported(node: ast.Import | ast.ImportFrom) -> set[str]:
    """Every module or name the statement imports, as dotted names."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    base = node.module or ""
    return {base} | {f"{base}.{alias.name}" for alias in node.names}


def imports(module: str) -> list[tuple[ast.Import | ast.ImportFrom, set[str]]]:
    return [
        (node, imported(node))
        for node in ast.walk(modules()[module])
        if isinstance(node, (ast.Import, ast.ImportFrom))
    ]


def package_graph() -> dict[str, set[str]]:
    names = set(modules())
    return {
        module: {
            target
            for node, targets in imports(module)
            if node.col_offset == 0
            for target in targets & names
            if target != module
        }
        for module in names
    }


def test_no_import_cycle_between_the_package_modules() -> None:
    graph = package_graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_no_package_import_inside_a_function() -> None:
    names = set(modules())
    inside = [
        (module, node.lineno, sorted(imported(node) & names))
        for module, tree in modules().items()
        for function in ast.walk(tree)
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(function)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        and imported(node) & names
        and not {(module, t) for t in imported(node)} & _READY_IMPORTS
    ]
    assert inside == []


def _calls(module: str, attributes: set[str]) -> list[tuple[str, int, str]]:
    found = []
    for node in ast.walk(modules()[module]):
        call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        if call and node.func.attr in attributes:  # type: ignore[attr-defined]
            found.append((module, node.lineno, ast.unparse(node.func)))  # type: ignore[attr-defined]
    return found


def test_only_the_ledger_writes_rows_and_publishes_states() -> None:
    """No ``.update(``/``.delete()``/``.create(``/``bulk_create`` of a queryset, and no cache
    write of a state, outside ``ledger.py`` and the tus rows' ``tus_store.py`` (``state.py``
    defines the write primitives the ledger calls)."""
    writers = []
    for module in modules():
        if module in ("queued_storage.ledger", "queued_storage.tus_store", "queued_storage.state"):
            continue
        for where in _calls(module, {"write_state", "write_progress", "drop_state"}):
            writers.append(where)
        for node, targets in imports(module):
            if {"queued_storage.state.write_state", "queued_storage.state.drop_state"} & targets:
                writers.append((module, node.lineno, "imports a cache write"))
        for module_, line, call in _calls(module, {"update", "delete", "create", "bulk_create"}):
            receiver = call.rsplit(".", 1)[0]
            queryset = (".objects", "rows(", "StoredFile", ".filter(", ".exclude(", ".using(")
            if any(mark in receiver for mark in queryset):
                writers.append((module_, line, call))
    assert writers == []


def test_every_write_of_the_ledger_goes_through_its_transition_mechanism() -> None:
    """In ``ledger.py`` a queryset's ``.update(``/``.delete()`` is written only in
    ``_transition`` (every declared transition) and ``_take`` (the lease's ``UPDATE ...
    RETURNING``): no transition of ``Ledger`` writes by hand beside the table."""
    writers = sorted(
        {
            method.name
            for cls in modules()["queued_storage.ledger"].body
            if isinstance(cls, ast.ClassDef)
            for method in cls.body
            if isinstance(method, ast.FunctionDef)
            for node in ast.walk(method)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("update", "delete")
        }
    )
    assert writers == ["_take", "_transition"]


def test_only_the_construction_module_reads_the_storages_setting() -> None:
    """``settings.STORAGES`` is read through ``queued_storage.construction`` (``is_alias``,
    ``storage_spec``, ``resolve_storage``, ``queued_entries``), so that an alias or a dotted
    path means the same thing to the storage, the checks, the doctor and the commands."""
    readers = [
        (module, node.lineno)
        for module, tree in modules().items()
        if module != "queued_storage.construction"
        for node in ast.walk(tree)
        if (isinstance(node, ast.Constant) and node.value == "STORAGES")
        or (isinstance(node, ast.Attribute) and node.attr == "STORAGES")
    ]
    assert readers == []


def test_the_engine_imports_no_celery_cache_or_ledger() -> None:
    engine = [m for m in modules() if m == "queued_storage.transfer" or ".s3" in m or "_s3" in m]
    assert "queued_storage.transfer" in engine
    forbidden = (
        "celery",
        "django.core.cache",
        "queued_storage.state",
        "queued_storage.models",
        "queued_storage.ledger",
        "queued_storage.tasks",
        "queued_storage.worker",
    )
    found = [
        (module, node.lineno, sorted(targets))
        for module in engine
        for node, targets in imports(module)
        if any(t == f or t.startswith(f + ".") for t in targets for f in forbidden)
    ]
    assert found == []


def test_views_import_no_model() -> None:
    found = [
        (node.lineno, sorted(targets))
        for node, targets in imports("queued_storage.views")
        if any(t.startswith("queued_storage.models") for t in targets)
    ]
    assert found == []


def test_tasks_hold_only_celery_glue_and_the_worker_needs_no_celery() -> None:
    tasks = modules()["queued_storage.tasks"]
    functions = [n.name for n in tasks.body if isinstance(n, ast.FunctionDef)]
    classes = [n.name for n in tasks.body if isinstance(n, ast.ClassDef)]
    assert (sorted(functions), sorted(classes)) == (
        ["_reconcile_on_start", "_share", "reconcile"],
        ["Transfer", "TransferAndDelete"],
    )
    code = (
        "import sys, django; from django.conf import settings; "
        "settings.configure(INSTALLED_APPS=['django.contrib.contenttypes', 'queued_storage'], "
        "DATABASES={'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': ':memory:'}}); "
        "django.setup(); import queued_storage.worker, queued_storage.reconcile; "
        "print(sorted(m for m in sys.modules if m == 'celery' or m.startswith('celery.')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "module", ["worker", "reconcile", "storage", "views", "dispatch", "state", "transfer"]
)
def test_loggers_are_named_after_their_module(module: str) -> None:
    source = ast.unparse(modules()[f"queued_storage.{module}"])
    assert "getLogger(__name__)" in source
    assert '"queued_storage: ' not in source
