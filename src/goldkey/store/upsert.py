"""Dialect-aware INSERT ... ON CONFLICT DO UPDATE for SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import sqlalchemy as sa


def upsert(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]], keys: list[str], *,
           only: Collection[str] | None = None, keep: Collection[str] = ()) -> None:
    """Insert ``rows`` into ``table``; rows whose ``keys`` exist replace the other columns.

    ``only``: replace just these columns of an existing row (a file that had no column for a field
    leaves it as it was). ``keep``: of those, columns whose new value is null keep the old one.
    """
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(table)
    cols = [c for c in rows[0] if c not in keys and (only is None or c in only)]
    new = stmt.excluded
    set_ = {c: sa.func.coalesce(new[c], table.c[c]) if c in keep else new[c] for c in cols}
    if not set_:
        stmt = stmt.on_conflict_do_nothing(index_elements=keys)
    else:
        stmt = stmt.on_conflict_do_update(index_elements=keys, set_=set_)
    for i in range(0, len(rows), 2000):
        conn.execute(stmt, rows[i : i + 2000])
