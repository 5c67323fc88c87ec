"""Alembic environment: the connection comes from :func:`fmeval.server.db.upgrade`."""

from alembic import context

from fmeval.server.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
