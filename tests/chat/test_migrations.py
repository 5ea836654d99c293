"""Migrations stay backward compatible (docs/operations.md "Upgrades without downtime":
expand, then contract).

`make upgrade` and a Kubernetes rollout migrate first, while the previous version still
serves, so every migration must leave a schema that version can use: no dropped or renamed
column or table, no new NOT NULL column the old code would not fill, no column turned NOT
NULL. Such a change is a *contract* step, shipped in a later release once no running version
uses the old shape, in a migration that says so with a class attribute `contract = True`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from django.db import migrations, models
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.state import ProjectState

SRC = Path(__file__).resolve().parents[2] / "src"
BREAKING = (
    migrations.RemoveField,
    migrations.RenameField,
    migrations.DeleteModel,
    migrations.RenameModel,
    migrations.AlterModelTable,
)


def contract_operations(migration: migrations.Migration, before: ProjectState) -> list[str]:
    """What in `migration` would break the version before it (empty: an expand step)."""
    found = []
    state = before.clone()
    for op in migration.operations:
        what = f"{migration.app_label}.{migration.name}: {op.describe()}"
        if isinstance(op, BREAKING):
            found.append(what)
        elif isinstance(op, migrations.AddField) and _not_null_without_db_default(op.field):
            found.append(f"{what} (NOT NULL without db_default: the old code's INSERTs fail)")
        elif isinstance(op, migrations.AlterField) and not op.field.null:
            old = state.models[migration.app_label, op.model_name_lower].fields[op.name]
            if old.null:
                found.append(f"{what} (now NOT NULL: the old code may write NULLs)")
        op.state_forwards(migration.app_label, state)
    return found


def _not_null_without_db_default(field: models.Field) -> bool:
    return not field.null and field.db_default is models.NOT_PROVIDED and not field.many_to_many


def our_migrations(loader: MigrationLoader) -> list[tuple[str, str]]:
    """The project's own migrations (not Django's or third parties')."""
    return sorted(
        key
        for key, migration in loader.disk_migrations.items()
        if Path(sys.modules[migration.__module__].__file__).resolve().is_relative_to(SRC)
    )


def test_every_migration_is_an_expand_step_unless_marked_contract() -> None:
    loader = MigrationLoader(None, ignore_no_migrations=True)
    keys = our_migrations(loader)
    assert ("chat", "0001_initial") in keys
    problems = []
    for key in keys:
        migration = loader.disk_migrations[key]
        if getattr(migration, "initial", False) or getattr(migration, "contract", False):
            continue
        before = loader.project_state(key, at_end=False)  # the schema it starts from
        problems += contract_operations(migration, before)
    assert not problems, (
        "backward-incompatible migration operations (docs/operations.md 'Upgrades without "
        "downtime'): ship them in a later release as a migration with `contract = True`:\n"
        + "\n".join(problems)
    )


# --- the guard itself: each kind of breaking change is caught, an expand step is not --------


def _state() -> ProjectState:
    state = ProjectState()
    migrations.CreateModel(
        "Note",
        [
            ("id", models.BigAutoField(primary_key=True)),
            ("body", models.TextField()),
            ("title", models.CharField(max_length=50, null=True)),
        ],
    ).state_forwards("demo", state)
    return state


def _migration(*operations: migrations.operations.base.Operation) -> migrations.Migration:
    migration = migrations.Migration("0002_change", "demo")
    migration.operations = list(operations)
    return migration


@pytest.mark.parametrize(
    "operation",
    [
        migrations.RemoveField("note", "body"),
        migrations.RenameField("note", "body", "text"),
        migrations.DeleteModel("Note"),
        migrations.RenameModel("Note", "Memo"),
        migrations.AddField("note", "kind", models.CharField(max_length=5, default="x")),
        migrations.AlterField("note", "title", models.CharField(max_length=50)),
    ],
    ids=["remove", "rename-field", "delete-model", "rename-model", "add-not-null", "set-not-null"],
)
def test_the_guard_catches_a_breaking_operation(
    operation: migrations.operations.base.Operation,
) -> None:
    assert contract_operations(_migration(operation), _state())


def test_the_guard_lets_expand_steps_through() -> None:
    expand = _migration(
        migrations.AddField("note", "kind", models.CharField(max_length=5, null=True)),
        migrations.AddField("note", "pinned", models.BooleanField(db_default=False)),
        migrations.AlterField("note", "body", models.TextField(blank=True)),
        migrations.AddIndex("note", models.Index(fields=["title"], name="note_title")),
    )
    assert contract_operations(expand, _state()) == []
