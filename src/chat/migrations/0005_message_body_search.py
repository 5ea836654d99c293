"""Full-text index on message bodies, for search (chat.selectors.message_search). Postgres
only: on SQLite (`make dev`) search falls back to a LIKE per word and this does nothing.

The index's expression must be the one the search query writes, word for word
(selectors.SEARCH_VECTOR_SQL), or the planner cannot use it. The 'simple' configuration
lower-cases words and neither stems nor drops stop words: messages are in any language, and
an English stemmer would mangle the others (a search for "dans" or "hallo" must find them).

Built CONCURRENTLY (so not in a transaction: atomic = False): chat_message is the largest
table, and a plain CREATE INDEX would hold up every send while it builds during a rolling
upgrade (docs/operations.md, "Upgrades without downtime"). An interrupted build leaves an
invalid index behind, which the next run drops and builds again.
"""

from django.db import migrations

INDEX = "chat_message_body_fts"


def create_index(apps, schema_editor) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    table = schema_editor.quote_name(apps.get_model("chat", "Message")._meta.db_table)
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = %s AND pg_catalog.pg_table_is_visible(c.oid)",
            [INDEX],
        )
        row = cursor.fetchone()
        if row is not None and row[0]:
            return
        if row is not None:
            cursor.execute(f"DROP INDEX CONCURRENTLY {INDEX}")
        cursor.execute(
            f"CREATE INDEX CONCURRENTLY {INDEX} ON {table} "
            "USING gin (to_tsvector('simple'::regconfig, body))"
        )


def drop_index(apps, schema_editor) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("chat", "0004_stream_changes"),
    ]

    operations = [
        migrations.RunPython(create_index, drop_index, elidable=False),
    ]
