"""Alembic environment: runs on the connection Goldkey hands over (see store.operational.migrate)."""

from alembic import context

from goldkey.store.operational import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic` command line: use the URL from the config
    import sqlalchemy as sa

    connection = sa.create_engine(context.config.get_main_option("sqlalchemy.url")).connect()

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
